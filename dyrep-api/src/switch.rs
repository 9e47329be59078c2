//! Thread-local on/off switches scoped to a closure (docs/ARCHITECTURE.md "How a block runs: the
//! ambient switches"): `branchwise` and `live_kernels` are two.

use std::cell::Cell;
use std::thread::LocalKey;

/// Runs `f` with `flag` on for this thread; the previous value comes back afterwards, also
/// when `f` panics.
pub(crate) fn with_flag<R>(flag: &'static LocalKey<Cell<bool>>, f: impl FnOnce() -> R) -> R {
    struct Restore(&'static LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|b| b.set(self.1));
        }
    }
    let _restore = Restore(flag, flag.with(|b| b.replace(true)));
    f()
}

/// Whether `flag` is on for this thread.
pub(crate) fn flag_on(flag: &'static LocalKey<Cell<bool>>) -> bool {
    flag.with(|b| b.get())
}
