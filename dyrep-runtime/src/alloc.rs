//! Allocator policy for training: candle returns a fresh
//! buffer from every op, and glibc's default policy hands large freed blocks back to the kernel
//! at once, so the next op faults its pages in and zeroes them again (35 % of a training step in
//! the peer benchmark's profile). Raising the mmap and trim thresholds keeps freed memory in the
//! process for reuse: measured 1.5-1.7× on training there. No-op off glibc.

/// Keeps freed activation-sized blocks (up to 32 MiB, glibc's maximum mmap threshold) in the
/// heap, never trims it, and caps the arenas at two. Call once at start-up, before threads.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tunables; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Peak resident memory of this process (VmHWM), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}
