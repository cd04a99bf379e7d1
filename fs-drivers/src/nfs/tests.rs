//! Protocol-level tests of the XDR/RPC layer on recorded byte fixtures (in memory only).
