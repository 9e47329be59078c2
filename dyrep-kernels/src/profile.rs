//! Per-kernel wall-clock totals for `dyrep bench` (knowing where a training step goes). Always
//! on: one `Instant` pair per kernel call, nothing per element. The per-conv profile (time and
//! MACs of each conv geometry's passes, for its GFLOP/s) is switched on by the benchmark only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
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

/// Zeroes the totals and the per-conv profile.
pub fn reset() {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
    match PER_CONV.lock() {
        Ok(mut m) => m.clear(),
        Err(poisoned) => poisoned.into_inner().clear(),
    }
}

/// A conv as the per-conv profile groups it: its geometry without the batch. `shared` > 0 marks
/// the convs of one grown block that share a patch matrix (`patches.rs`), timed together: then
/// `out` is the members' output channels together and `kh × kw` the main conv's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConvKey {
    pub c: usize,
    pub out: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub groups: usize,
    pub shared: usize,
}

/// The time and work of one [`ConvKey`] since the last reset, per conv pass (forward, input
/// gradient, weight gradient).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvTimes {
    pub calls: [u64; 3],
    pub seconds: [f64; 3],
    pub macs: [u64; 3],
}

/// The conv passes of the per-conv profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPass {
    Forward = 0,
    InputGrad = 1,
    WeightGrad = 2,
}

static PER_CONV_ON: AtomicBool = AtomicBool::new(false);
static PER_CONV: Mutex<BTreeMap<ConvKey, ConvTimes>> = Mutex::new(BTreeMap::new());

/// Turns the per-conv profile on or off (off by default: training does not pay for the lock).
pub fn set_per_conv(on: bool) {
    PER_CONV_ON.store(on, Ordering::Relaxed);
}

/// The per-conv times since the last [`reset`], by conv.
pub fn per_conv() -> Vec<(ConvKey, ConvTimes)> {
    match PER_CONV.lock() {
        Ok(m) => m.iter().map(|(k, v)| (*k, *v)).collect(),
        Err(poisoned) => poisoned
            .into_inner()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect(),
    }
}

/// Adds the time until the guard drops to one conv's pass in the per-conv profile (when on).
pub(crate) struct ConvTimer {
    key: ConvKey,
    pass: ConvPass,
    macs: u64,
    start: Option<Instant>,
}

impl ConvTimer {
    pub fn start(key: ConvKey, pass: ConvPass, macs: u64) -> Self {
        let start = PER_CONV_ON.load(Ordering::Relaxed).then(Instant::now);
        ConvTimer {
            key,
            pass,
            macs,
            start,
        }
    }
}

impl Drop for ConvTimer {
    fn drop(&mut self) {
        let Some(start) = self.start else { return };
        let seconds = start.elapsed().as_secs_f64();
        let mut map = match PER_CONV.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let t = map.entry(self.key).or_default();
        let i = self.pass as usize;
        t.calls[i] += 1;
        t.seconds[i] += seconds;
        t.macs[i] += self.macs;
    }
}
