//! Synchronised batch norm for data-parallel training (docs/ARCHITECTURE.md "Data-parallel
//! training"). While a [`BatchSync`] is installed on the training thread, every batch norm that
//! normalises with batch statistics uses the statistics of the global batch — the union of every
//! process's batch — as PyTorch's `SyncBatchNorm` does: the per-channel sums are all-reduced in
//! the forward pass, and the gradients of those sums are all-reduced in the backward pass, so
//! each process's gradient carries the other processes' losses through the shared statistics.
//! The fused kernels that compute the statistics of the local batch inside one op (conv → BN
//! units, unit stacks, the grown-block op) are bypassed while it is installed
//! ([`sync_bn_on`]); every process runs the same graph, so the collectives meet in the same
//! order on every process.
//!
//! Without an installed [`BatchSync`] nothing here runs and batch norm is per process (the
//! reference's default for data-parallel training).

use std::cell::RefCell;
use std::rc::Rc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::error::{Error, Result};

/// Sums a buffer elementwise over every process (in place); the same call on every process.
pub trait BatchSync {
    fn all_reduce_sum(&self, buf: &mut [f32]) -> std::result::Result<(), String>;
}

thread_local! {
    static SYNC: RefCell<Option<Rc<dyn BatchSync>>> = const { RefCell::new(None) };
}

/// Installs `sync` on this thread (the thread that runs the forward and backward passes) until
/// the returned guard is dropped.
pub fn install(sync: Rc<dyn BatchSync>) -> SyncBnGuard {
    let previous = SYNC.with(|s| s.replace(Some(sync)));
    SyncBnGuard { previous }
}

/// Restores what was installed before [`install`].
pub struct SyncBnGuard {
    previous: Option<Rc<dyn BatchSync>>,
}

impl Drop for SyncBnGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SYNC.with(|s| *s.borrow_mut() = previous);
    }
}

/// Whether batch statistics are synchronised on this thread.
pub fn sync_bn_on() -> bool {
    SYNC.with(|s| s.borrow().is_some())
}

fn all_reduce_in_place(buf: &mut [f32]) -> candle_core::Result<()> {
    let sync = SYNC.with(|s| s.borrow().clone()).ok_or_else(|| {
        candle_core::Error::Msg("all_reduce_sum ran with no BatchSync installed".into())
    })?;
    sync.all_reduce_sum(buf)
        .map_err(|e| candle_core::Error::Msg(format!("synchronised batch norm: {e}")))
}

/// `y = Σ_processes x`; its backward is the same sum of the incoming gradients (the gradient
/// of every process's loss with respect to the shared value).
struct AllReduceSum;

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "all_reduce_sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            return Err(candle_core::Error::Msg(
                "synchronised batch norm needs f32 tensors".into(),
            ));
        };
        let mut buf: Vec<f32> = match l.contiguous_offsets() {
            Some((start, end)) => data[start..end].to_vec(),
            None => {
                return Err(candle_core::Error::Msg(
                    "all_reduce_sum needs a contiguous tensor".into(),
                ))
            }
        };
        all_reduce_in_place(&mut buf)?;
        Ok((CpuStorage::F32(buf), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut buf = dy.flatten_all()?.to_vec1::<f32>()?;
        all_reduce_in_place(&mut buf)?;
        Ok(Some(Tensor::from_vec(buf, dy.shape(), dy.device())?))
    }
}

/// The per-channel mean and biased variance of `x` (`[N, C, H, W]`) over every process's batch,
/// and the number of values per channel they cover; differentiable through both collectives.
pub(crate) fn global_batch_stats(x: &Tensor) -> Result<(Tensor, Tensor, usize)> {
    if !x.device().is_cpu() {
        return Err(Error::Unsupported {
            op: "batch_norm".into(),
            what: "synchronised statistics on a GPU (the collectives run on the CPU over MPI)"
                .into(),
        });
    }
    let (n, c, h, w) = x.dims4()?;
    let channel_sums = |t: &Tensor| -> Result<Tensor> {
        Ok(t.sum_keepdim(0)?
            .sum_keepdim(2)?
            .sum_keepdim(3)?
            .flatten_all()?)
    };
    // The local count travels with the sums: processes may hold batches of different sizes.
    let local_count = Tensor::new(&[(n * h * w) as f32], x.device())?;
    let sums = Tensor::cat(&[&channel_sums(x)?, &local_count], 0)?.apply_op1(AllReduceSum)?;
    let count = sums.get(c)?.to_scalar::<f32>()? as usize;
    if count < 2 {
        return Err(Error::SingleValueBatch {
            context: format!("{c} channels, global batch of {count} values per channel"),
        });
    }
    let mean = (sums.narrow(0, 0, c)? / count as f64)?;
    // Two passes (the sum of squared deviations), as exact as the local kernels' statistics.
    let centred = x.broadcast_sub(&mean.reshape((1, c, 1, 1))?)?;
    let var = (channel_sums(&centred.sqr()?)?.apply_op1(AllReduceSum)? / count as f64)?;
    Ok((mean, var, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::normal_tensor;
    use candle_core::{Device, Var};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Two "processes" simulated on one thread: the sync adds the other half's buffer, which
    /// the test computes from the same graph on the other half beforehand.
    struct AddRecorded(RefCell<Vec<Vec<f32>>>);

    impl BatchSync for AddRecorded {
        fn all_reduce_sum(&self, buf: &mut [f32]) -> std::result::Result<(), String> {
            let other = self.0.borrow_mut().remove(0);
            if other.len() != buf.len() {
                return Err(format!("length {} vs {}", other.len(), buf.len()));
            }
            buf.iter_mut().zip(other).for_each(|(b, o)| *b += o);
            Ok(())
        }
    }

    /// Records what it is asked to reduce and adds nothing (the other process's view).
    struct Record(RefCell<Vec<Vec<f32>>>);

    impl BatchSync for Record {
        fn all_reduce_sum(&self, buf: &mut [f32]) -> std::result::Result<(), String> {
            self.0.borrow_mut().push(buf.to_vec());
            Ok(())
        }
    }

    #[test]
    fn statistics_are_those_of_the_union_of_the_batches() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let a = normal_tensor(&mut rng, &[3, 4, 5, 5], 1.0, 2.0, &Device::Cpu).unwrap();
        let b = normal_tensor(&mut rng, &[2, 4, 5, 5], -0.5, 1.0, &Device::Cpu).unwrap();
        // What process b contributes to each collective of process a's forward: its channel
        // sums with its count, then its sum of squared deviations from the *global* mean.
        let whole = Tensor::cat(&[&a, &b], 0).unwrap();
        let per_channel = |t: &Tensor| {
            t.sum_keepdim(0)
                .unwrap()
                .sum_keepdim(2)
                .unwrap()
                .sum_keepdim(3)
                .unwrap()
                .flatten_all()
                .unwrap()
        };
        let mean = (per_channel(&whole) / 125.0).unwrap();
        let mut first = per_channel(&b).to_vec1::<f32>().unwrap();
        first.push(50.0);
        let second = per_channel(
            &b.broadcast_sub(&mean.reshape((1, 4, 1, 1)).unwrap())
                .unwrap()
                .sqr()
                .unwrap(),
        )
        .to_vec1::<f32>()
        .unwrap();
        let sync: Rc<dyn BatchSync> = Rc::new(AddRecorded(RefCell::new(vec![first, second])));
        let _guard = install(sync);
        let (m, v, count) = global_batch_stats(&a).unwrap();
        assert_eq!(count, 125);
        let want_var = (per_channel(
            &whole
                .broadcast_sub(&mean.reshape((1, 4, 1, 1)).unwrap())
                .unwrap()
                .sqr()
                .unwrap(),
        ) / 125.0)
            .unwrap();
        for (got, want) in [(m, mean), (v, want_var)] {
            let (g, w) = (
                got.to_vec1::<f32>().unwrap(),
                want.to_vec1::<f32>().unwrap(),
            );
            for (g, w) in g.iter().zip(&w) {
                // Sums of 125 values of magnitude ≲ 8 in a different order: a few ulps of the
                // sum, divided by the count.
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
            }
        }
    }

    #[test]
    fn the_backward_pass_reduces_the_gradients_of_the_shared_sums() {
        // y = all_reduce_sum(x); loss = Σ y·c. Locally dloss/dy = c; the other process adds
        // its own c' (recorded), so dloss/dx = c + c'.
        let x = Var::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let c = Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).unwrap();
        let other_grad = vec![1.0f32, 1.0, -3.0];
        let sync: Rc<dyn BatchSync> = Rc::new(AddRecorded(RefCell::new(vec![
            vec![0.0; 3],
            other_grad.clone(),
        ])));
        let _guard = install(sync);
        let y = x.as_tensor().apply_op1(AllReduceSum).unwrap();
        let loss = (y * &c).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, vec![1.5, 0.0, -1.0]);
    }

    #[test]
    fn without_a_sync_the_op_is_an_error_not_a_local_sum() {
        assert!(!sync_bn_on());
        let x = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let e = x.apply_op1(AllReduceSum).unwrap_err().to_string();
        assert!(e.contains("no BatchSync"), "{e}");
        // And an installed sync is removed with its guard.
        let record = Rc::new(Record(RefCell::new(Vec::new())));
        {
            let _guard = install(record.clone());
            assert!(sync_bn_on());
            x.apply_op1(AllReduceSum).unwrap();
        }
        assert!(!sync_bn_on());
        assert_eq!(record.0.borrow().len(), 1);
    }
}
