//! The side channel of the own training ops. A candle custom op returns one tensor, and its
//! backward receives only the op's inputs, its output and the upstream gradient. Our fused ops
//! (the conv unit, the unit stack, the grown block) need more: their backward reuses what the
//! forward computed (BN inputs and normalisations, pooling winners, padded stage inputs) instead
//! of recomputing it, and their caller needs each BN's batch statistics to update the running
//! ones. Those travel beside the op in a `SideChannel`: the op holds one handle and fills it in
//! its forward, the wrapper that applied the op holds the other and reads the statistics; the
//! backward (which candle calls on the op) reads the rest.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{Device, Tensor};

use crate::bn::ChannelStats;
use crate::Result;

/// A shared slot for what an op's forward leaves behind (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct SideChannel<T>(Arc<Mutex<T>>);

impl<T> Clone for SideChannel<T> {
    fn clone(&self) -> Self {
        SideChannel(self.0.clone())
    }
}

impl<T> SideChannel<T> {
    pub(crate) fn new(value: T) -> Self {
        SideChannel(Arc::new(Mutex::new(value)))
    }

    /// The contents (a panic while it was held leaves the value as it was; the slot stays
    /// usable).
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A BN's batch statistics as the `(mean, biased variance)` tensors of its channels.
pub(crate) fn stats_tensors(stats: &[ChannelStats], device: &Device) -> Result<(Tensor, Tensor)> {
    let mean: Vec<f32> = stats.iter().map(|s| s.mean()).collect();
    let var: Vec<f32> = stats.iter().map(|s| s.var).collect();
    let c = mean.len();
    Ok((
        Tensor::from_vec(mean, c, device)?,
        Tensor::from_vec(var, c, device)?,
    ))
}
