//! Data-parallel training across processes (docs/DISTRIBUTED.md): the processes of
//! a run and their collectives. One process is [`SingleProcess`]; with the `mpi` feature,
//! [`init`] joins the MPI world `mpirun` started (Open MPI; launching, rendezvous and CPU
//! collectives are MPI's). Rank 0 owns the run directory; every rank reads a disjoint shard of
//! each epoch's seeded order (`data::loader::rank_shard`); gradients are averaged over the ranks
//! in a few large buckets before the optimizer step; parameters start from rank 0's; evaluation
//! is sharded and its sums reduced. DyRep stays in lockstep: the scorer sees the averaged
//! gradients (and a probing scorer's extra gradient passes are averaged too), calibration batches are the same on every rank, cuts follow from the (identical)
//! γ, and after every grow/cut each rank checks its architecture against rank 0's; the BN running statistics (each rank's from its own batches)
//! are averaged over the ranks at the end of every epoch (with `sync_bn`, batch norm uses the
//! global batch's statistics instead: [`install_sync_bn`]), before evaluation and the checkpoint,
//! so every rank holds rank 0's model and a resume continues exactly. A rank that fails takes the others down (MPI's default
//! error handler aborts the job), and rank 0's last checkpoint is intact.

use std::collections::BTreeMap;
use std::rc::Rc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use dyrep_api::TensorRole;

use crate::error::{Result, RuntimeError};
use crate::model::Model;

/// The processes of a run.
pub trait Comm {
    /// This process's index, 0 ≤ rank < size.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn size(&self) -> usize;
    /// Element-wise sum over every rank, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Element-wise sum over every rank, in place (for counts and loss sums).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Rank 0's values to every rank (same length everywhere).
    fn broadcast(&self, buf: &mut [f32]) -> Result<()>;
    /// Element-wise sum over every rank of an f32 tensor, as a new tensor on its device. By
    /// default through host memory and [`Comm::all_reduce_sum`]; NCCL's communicator keeps GPU
    /// tensors on the GPU.
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let mut flat = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.all_reduce_sum(&mut flat)?;
        Ok(Tensor::from_vec(flat, t.dims(), t.device())?)
    }
    /// What carries the gradients' all-reduce, for the run's log (`MPI`, `NCCL`, ...).
    fn backend(&self) -> &'static str;
    /// Ends every rank's process with `code` at once: what a rank that fails alone does, so
    /// the others do not wait forever in their next collective (or in MPI's finalisation).
    /// Returns for one process, which has no one to stop.
    fn abort_all(&self, code: i32);
}

/// A run of one process: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Comm for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn backend(&self) -> &'static str {
        "one process"
    }
    fn abort_all(&self, _: i32) {}
}

/// The ranks' sums for synchronised batch norm (`dyrep_api::sync_bn`).
struct CommBatchSync(Rc<dyn Comm>);

impl dyrep_api::BatchSync for CommBatchSync {
    fn all_reduce_sum(&self, buf: &mut [f32]) -> std::result::Result<(), String> {
        self.0.all_reduce_sum(buf).map_err(|e| e.to_string())
    }
}

/// Makes every batch norm on this thread normalise with the statistics of all ranks' batches
/// until the guard is dropped.
pub fn install_sync_bn(comm: Rc<dyn Comm>) -> dyrep_api::SyncBnGuard {
    dyrep_api::sync_bn::install(Rc::new(CommBatchSync(comm)))
}

/// Whether this process was started by an MPI launcher (`mpirun`, `srun`).
pub fn launched_by_mpi() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some())
}

/// This process's index among the ranks on its machine (0 when no launcher says so): the GPU
/// that `--device cuda` means under `mpirun` (one GPU per rank).
pub fn local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
        "PMI_LOCAL_RANK",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.parse().ok())
    .unwrap_or(0)
}

/// The processes of this run: the MPI world when `distributed` (or when an MPI launcher started
/// the process), else this process alone. On a GPU `device`, with the `nccl` feature, the
/// gradients are reduced by NCCL in GPU memory ([`nccl::NcclComm`]).
pub fn init(distributed: bool, device: &Device) -> Result<Rc<dyn Comm>> {
    if !distributed && !launched_by_mpi() {
        return Ok(Rc::new(SingleProcess));
    }
    let processes = processes(device)?;
    #[cfg(feature = "nccl")]
    if device.is_cuda() {
        return Ok(Rc::new(nccl::NcclComm::new(processes, device)?));
    }
    Ok(processes)
}

/// The process communicator of a distributed run: MPI's world, or — in a build with NCCL but
/// without MPI, started without a launcher — this process alone (a one-rank NCCL run).
#[cfg_attr(feature = "mpi", allow(unused_variables))]
fn processes(device: &Device) -> Result<Rc<dyn Comm>> {
    #[cfg(feature = "mpi")]
    {
        Ok(Rc::new(mpi_comm::MpiComm::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    {
        if cfg!(feature = "nccl") && device.is_cuda() && !launched_by_mpi() {
            return Ok(Rc::new(SingleProcess));
        }
        Err(RuntimeError::Config(
            "--distributed needs a dyrep built with MPI: `cargo build --release -p dyrep-cli --features mpi` (Debian: apt install libopenmpi-dev openmpi-bin libclang-dev), then `mpirun -np N dyrep train ... --distributed`".into(),
        ))
    }
}

#[cfg(feature = "nccl")]
mod nccl;

#[cfg(feature = "mpi")]
mod mpi_comm {
    use mpi::collective::SystemOperation;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    use super::Comm;
    use crate::error::{Result, RuntimeError};

    /// The MPI world (Open MPI). Its collectives block until every rank joins; a rank that
    /// dies makes `mpirun` end the others.
    pub struct MpiComm {
        _universe: mpi::environment::Universe,
        world: SimpleCommunicator,
    }

    impl MpiComm {
        pub fn init() -> Result<MpiComm> {
            let universe = mpi::initialize().ok_or_else(|| {
                RuntimeError::Config(
                    "MPI is already initialised in this process (start dyrep once per rank)".into(),
                )
            })?;
            let world = universe.world();
            Ok(MpiComm {
                _universe: universe,
                world,
            })
        }
    }

    impl Comm for MpiComm {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
            let send = buf.to_vec();
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
            Ok(())
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            let send = buf.to_vec();
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
            Ok(())
        }
        fn broadcast(&self, buf: &mut [f32]) -> Result<()> {
            self.world.process_at_rank(0).broadcast_into(buf);
            Ok(())
        }
        fn backend(&self) -> &'static str {
            "MPI"
        }
        fn abort_all(&self, code: i32) {
            self.world.abort(code)
        }
    }
}

/// Floats per gradient all-reduce: a few large messages rather than one per tensor.
const BUCKET: usize = 1 << 22;

/// Averages the trainable parameters' gradients over the ranks, in buckets of [`BUCKET`]
/// floats, in parameter order (the same on every rank). Returns the bytes this rank sent into
/// the all-reduces (0 for one process).
pub fn average_grads(
    comm: &dyn Comm,
    params: &[(String, Var, TensorRole)],
    grads: &mut GradStore,
) -> Result<usize> {
    let world = comm.size();
    if world == 1 {
        return Ok(0);
    }
    let mut bytes = 0;
    let with_grad: Vec<(&Var, Tensor)> = params
        .iter()
        .filter(|(_, _, role)| role.is_trainable())
        .filter_map(|(_, v, _)| grads.get(v.as_tensor()).map(|g| (v, g.clone())))
        .collect();
    let mut start = 0;
    while start < with_grad.len() {
        let mut end = start;
        let mut len = 0;
        while end < with_grad.len()
            && (end == start || len + with_grad[end].1.elem_count() <= BUCKET)
        {
            len += with_grad[end].1.elem_count();
            end += 1;
        }
        let bucket: Vec<Tensor> = with_grad[start..end]
            .iter()
            .map(|(_, g)| g.clone())
            .collect();
        bytes += 4 * len;
        for ((v, _), avg) in with_grad[start..end].iter().zip(average(comm, &bucket)?) {
            grads.insert(v.as_tensor(), avg);
        }
        start = end;
    }
    Ok(bytes)
}

/// The model's tensors that `keep(role)` selects, by path (the same order on every rank).
fn model_vars(model: &Model, keep: fn(TensorRole) -> bool) -> BTreeMap<String, Var> {
    let mut vars = BTreeMap::new();
    model.visit_tensors(&mut |p, v, role| {
        if keep(role) {
            vars.insert(p.to_string(), v.clone());
        }
    });
    vars
}

/// The variables' values, concatenated as f32.
fn flatten(vars: &BTreeMap<String, Var>) -> Result<Vec<f32>> {
    let mut flat = Vec::new();
    for v in vars.values() {
        let t = v
            .as_tensor()
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?;
        flat.extend(t.to_vec1::<f32>()?);
    }
    Ok(flat)
}

/// Sets the variables from `flat` (as [`flatten`] lays them out), each value times `scale`.
fn set_from_flat(vars: &BTreeMap<String, Var>, flat: &[f32], scale: f32) -> Result<()> {
    let mut at = 0;
    for v in vars.values() {
        let n = v.elem_count();
        let vals: Vec<f32> = flat[at..at + n].iter().map(|x| x * scale).collect();
        v.set(&Tensor::from_vec(vals, v.dims(), v.device())?.to_dtype(v.dtype())?)?;
        at += n;
    }
    Ok(())
}

/// Makes every rank's model tensors (parameters and running statistics) rank 0's.
pub fn broadcast_model(comm: &dyn Comm, model: &Model) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let vars = model_vars(model, |_| true);
    let mut flat = flatten(&vars)?;
    comm.broadcast(&mut flat)?;
    set_from_flat(&vars, &flat, 1.0)
}

/// Averages the BN running statistics over the ranks (each rank's come from its own batches),
/// so evaluation, the checkpoint and a resume see one model.
pub fn average_running_stats(comm: &dyn Comm, model: &Model) -> Result<()> {
    let world = comm.size();
    if world == 1 {
        return Ok(());
    }
    let vars = model_vars(model, |role| !role.is_trainable());
    let mut flat = flatten(&vars)?;
    comm.all_reduce_sum(&mut flat)?;
    set_from_flat(&vars, &flat, 1.0 / world as f32)
}

/// Averages a set of tensors over the ranks, in key order (the same on every rank): a
/// scorer's probe gradients, which each rank computes on its own batch.
pub fn average_tensors(comm: &dyn Comm, tensors: &mut BTreeMap<String, Tensor>) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let values: Vec<Tensor> = tensors.values().cloned().collect();
    for (t, avg) in tensors.values_mut().zip(average(comm, &values)?) {
        *t = avg;
    }
    Ok(())
}

/// The mean over the ranks of each tensor, in one all-reduce of their concatenation on their
/// device (every rank passes tensors of the same shapes in the same order).
fn average(comm: &dyn Comm, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
    let flat: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.flatten_all()?.to_dtype(DType::F32))
        .collect::<candle_core::Result<_>>()?;
    let summed = comm.all_reduce_sum_tensor(&Tensor::cat(&flat, 0)?)?;
    let mean = (summed * (1.0 / comm.size() as f64))?;
    let mut at = 0;
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let n = t.elem_count();
        out.push(
            mean.narrow(0, at, n)?
                .reshape(t.dims())?
                .to_dtype(t.dtype())?,
        );
        at += n;
    }
    Ok(out)
}

/// Sums `values` over the ranks (f64: counts and loss sums stay exact).
pub fn sum_over_ranks(comm: &dyn Comm, values: &mut [f64]) -> Result<()> {
    comm.all_reduce_sum_f64(values)
}

/// How many ranks hold a `hash` other than rank 0's (rank 0's sent as four exact 16-bit
/// floats, the verdicts summed): the same answer on every rank, so all of them stop together.
fn ranks_unlike_lead(comm: &dyn Comm, hash: u64) -> Result<usize> {
    let mine: Vec<f32> = (0..4)
        .map(|i| ((hash >> (16 * i)) & 0xffff) as f32)
        .collect();
    let mut lead = mine.clone();
    comm.broadcast(&mut lead)?;
    let mut unlike = [f64::from(u8::from(lead != mine))];
    comm.all_reduce_sum_f64(&mut unlike)?;
    Ok(unlike[0] as usize)
}

/// Refuses to go on when a rank's architecture differs from rank 0's (never silent divergence).
pub fn check_same_arch(comm: &dyn Comm, model: &Model) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let json =
        serde_json::to_string(&model.arch()).map_err(|e| RuntimeError::Config(e.to_string()))?;
    let unlike = ranks_unlike_lead(comm, crate::hash::fnv64(json.bytes()))?;
    if unlike > 0 {
        return Err(RuntimeError::Training(format!(
            "{unlike} of {} ranks grew or cut a different architecture than rank 0; the ranks diverged (their scores or γ differed)",
            comm.size()
        )));
    }
    Ok(())
}

/// A checksum of the model's tensors (every value's bits, in path order).
pub fn weights_checksum(model: &Model) -> Result<u64> {
    let flat = flatten(&model_vars(model, |_| true))?;
    Ok(crate::hash::fnv64(
        flat.iter().flat_map(|v| v.to_bits().to_le_bytes()),
    ))
}

/// Refuses to go on when a rank's weights differ from rank 0's: checked after every epoch of a
/// data-parallel run, so the ranks never drift apart silently. Returns the checksum.
pub fn check_same_weights(comm: &dyn Comm, model: &Model) -> Result<u64> {
    let sum = weights_checksum(model)?;
    let unlike = match comm.size() {
        1 => 0,
        _ => ranks_unlike_lead(comm, sum)?,
    };
    if unlike > 0 {
        return Err(RuntimeError::Training(format!(
            "{unlike} of {} ranks hold weights other than rank 0's after this epoch; the ranks diverged",
            comm.size()
        )));
    }
    Ok(sum)
}
