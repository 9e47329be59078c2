//! Per-kernel wall-clock totals, for `dyrep bench --profile` (knowing where a training step
//! goes). Always on: one `Instant` pair per kernel call, nothing per element.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The timed phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    ConvForward,
    ConvInputGrad,
    ConvWeightGrad,
    BnForward,
    BnBackward,
    Pool,
    Relu,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::ConvForward,
        Phase::ConvInputGrad,
        Phase::ConvWeightGrad,
        Phase::BnForward,
        Phase::BnBackward,
        Phase::Pool,
        Phase::Relu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::ConvForward => "conv forward",
            Phase::ConvInputGrad => "conv input grad",
            Phase::ConvWeightGrad => "conv weight grad",
            Phase::BnForward => "bn(+relu) forward",
            Phase::BnBackward => "bn(+relu) backward",
            Phase::Pool => "pool fwd+bwd",
            Phase::Relu => "relu fwd+bwd",
        }
    }
}

static NANOS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

/// Adds the time until the guard drops to `phase`.
pub(crate) struct Timer(Phase, Instant);

impl Timer {
    pub fn start(phase: Phase) -> Self {
        Timer(phase, Instant::now())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        NANOS[self.0 as usize].fetch_add(self.1.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Seconds spent per phase since the last reset.
pub fn totals() -> Vec<(Phase, f64)> {
    Phase::ALL
        .iter()
        .map(|&p| (p, NANOS[p as usize].load(Ordering::Relaxed) as f64 * 1e-9))
        .collect()
}

/// Zeroes the totals.
pub fn reset() {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
}
