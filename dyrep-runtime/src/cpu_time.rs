//! Processor time of this process (user + system, all threads): a run's cost that does not grow
//! while the process is stopped and grows far less than the wall clock while another job shares
//! the cores.
//! Recorded per epoch beside the wall-clock seconds (`metrics.csv`, `summary.json`).

/// Seconds of processor time this process has used so far (all threads, user + system);
/// `None` where the platform does not report it.
pub fn process_cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `usage` is a valid, writable `rusage`; getrusage writes at most that struct.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: zero-initialised (a valid `rusage`: integers only) and filled by getrusage.
        let usage = unsafe { usage.assume_init() };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        Some(secs(usage.ru_utime) + secs(usage.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn processor_time_counts_this_threads_work() {
        let start = process_cpu_seconds().expect("getrusage works on unix");
        // About 0.2 s of work on this thread. Other threads of the test process can only add.
        let t = std::time::Instant::now();
        let mut x = 1u64;
        while t.elapsed().as_secs_f64() < 0.2 {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        let worked = process_cpu_seconds().unwrap() - start;
        // A loaded machine may give the loop less than a core, but not under a tenth of one.
        assert!(worked >= 0.02, "0.2 s of work read {worked} s");
    }
}
