//! The processes of a data-parallel run on NVIDIA GPUs (docs/DISTRIBUTED.md):
//! NCCL all-reduces the gradient buckets and the probe gradients in GPU memory, one GPU per
//! rank, while launching, NCCL's rendezvous (rank 0's unique id) and the small host-side
//! collectives (counts, loss sums, architecture checks) stay with the process communicator —
//! MPI's under `mpirun`, or this process alone.

use std::rc::Rc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::{Comm as Nccl, Id, ReduceOp};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::Comm;
use crate::error::{Result, RuntimeError};

/// Bytes in NCCL's unique id.
const ID_BYTES: usize = 128;

/// The ranks of a run with their GPU collectives on NCCL.
pub struct NcclComm {
    processes: Rc<dyn Comm>,
    nccl: Nccl,
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> RuntimeError {
    RuntimeError::Config(format!(
        "NCCL {what} failed: {e:?} (NCCL_DEBUG=INFO in the environment makes NCCL say why)"
    ))
}

impl NcclComm {
    /// Joins the ranks of `processes` in one NCCL communicator on `device` (this rank's GPU):
    /// rank 0 makes the unique id and broadcasts it, every rank joins, and one all-reduce of a
    /// single 1 must return the world size on every rank before training starts.
    pub fn new(processes: Rc<dyn Comm>, device: &Device) -> Result<NcclComm> {
        let cuda = device.as_cuda_device()?;
        let id = match processes.rank() {
            0 => Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e))?,
            _ => Id::uninit([0; ID_BYTES]),
        };
        // Bytes travel as exact small floats over the process communicator.
        let mut wire: Vec<f32> = id.internal().iter().map(|&c| c as u8 as f32).collect();
        processes.broadcast(&mut wire)?;
        let mut internal = [0; ID_BYTES];
        for (dst, src) in internal.iter_mut().zip(&wire) {
            *dst = *src as u8 as std::ffi::c_char;
        }
        let nccl = Nccl::from_rank(
            cuda.cuda_stream(),
            processes.rank(),
            processes.size(),
            Id::uninit(internal),
        )
        .map_err(|e| nccl_error("ncclCommInitRank", e))?;
        let comm = NcclComm { processes, nccl };
        comm.handshake(device)?;
        Ok(comm)
    }

    /// Every rank contributes a 1; each must see the world size.
    fn handshake(&self, device: &Device) -> Result<()> {
        let one = Tensor::ones(1, DType::F32, device)?;
        let sum = self.all_reduce_sum_tensor(&one)?.to_vec1::<f32>()?[0];
        if sum != self.size() as f32 {
            return Err(RuntimeError::Config(format!(
                "NCCL's first all-reduce over {} ranks returned {sum}: the ranks are not in one communicator (check that every rank uses its own GPU)",
                self.size()
            )));
        }
        Ok(())
    }
}

impl Comm for NcclComm {
    fn rank(&self) -> usize {
        self.processes.rank()
    }
    fn size(&self) -> usize {
        self.processes.size()
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.processes.all_reduce_sum(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.processes.all_reduce_sum_f64(buf)
    }
    fn broadcast(&self, buf: &mut [f32]) -> Result<()> {
        self.processes.broadcast(buf)
    }
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if !t.device().is_cuda() {
            return self.processes.all_reduce_sum_tensor(t);
        }
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        Ok(t.apply_op1_no_bwd(&AllReduceSum { nccl: &self.nccl })?)
    }
    fn backend(&self) -> &'static str {
        "NCCL"
    }
    fn abort_all(&self, code: i32) {
        self.processes.abort_all(code)
    }
}

/// The element-wise sum over the ranks of an f32 tensor on this rank's GPU, into a new buffer
/// (NCCL enqueues it on the device's stream, so it is ordered with the kernels around it).
struct AllReduceSum<'a> {
    nccl: &'a Nccl,
}

impl CustomOp1 for AllReduceSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce runs on GPU tensors only")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("the NCCL all-reduce needs a contiguous tensor")
        };
        let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let device = storage.device().clone();
        let mut dst = device.alloc_zeros::<f32>(end - start)?;
        self.nccl
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce failed: {e:?}")))?;
        Ok((
            CudaStorage::wrap_cuda_slice(dst, device),
            layout.shape().clone(),
        ))
    }
}
