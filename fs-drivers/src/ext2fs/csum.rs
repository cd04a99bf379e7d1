//! Checksums: ext4's crc32c (metadata_csum) and the older crc16 (gdt_csum / uninit_bg).
//!
//! The kernel's `ext4_chksum(seed, data)` is the raw CRC-32C register update: no inversion
//! before or after. The `crc32c` crate implements the standard CRC (inverted in and out), so
//! `raw(seed, data) = !crc32c_append(!seed, data)`. The stored superblock checksum is then
//! `raw(!0, sb[..0x3FC])`, and the file system seed is `raw(!0, uuid)`.

/// ext4's `ext4_chksum`: the raw CRC-32C of `data` continuing from `seed`.
pub fn raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// The CRC-16 (reflected polynomial 0xA001, as e2fsprogs' `ext2fs_crc16`) of the group
/// descriptor checksum (`gdt_csum`), continuing from `crc`.
pub fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_crc_chains_like_one_pass() {
        let a = raw(0x1234_5678, b"hello ");
        assert_eq!(raw(a, b"world"), raw(0x1234_5678, b"hello world"));
        // The standard CRC-32C check value, through the raw form.
        assert_eq!(!raw(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn crc16_check_value() {
        // CRC-16/ARC check value (init 0, reflected 0x8005).
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
    }
}
