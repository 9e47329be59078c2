//! FNV-1a, 64 bits: the content keys of checkpoints (arch.json ↔ weights), of the decoded-image
//! cache, of data-parallel runs' cross-rank checks, and the stream of each seeded purpose
//! (`SeededRng::for_purpose`). Fast and stable; not cryptographic.

/// The hash of no bytes (FNV-1a's offset basis).
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// `h` (a hash so far) extended by `bytes`.
pub fn fnv64_extend(h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(h, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The hash of `bytes`.
pub fn fnv64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    fnv64_extend(FNV_START, bytes)
}
