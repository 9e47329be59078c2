//! Public property-test harness for plugin authors (cargo feature `testing`): proptest strategies
//! over random block geometries and inputs, and assertions that an op (or a block of ops, nested or
//! not) fuses into one conv with the same eval-mode output (docs/ARCHITECTURE.md "Numerics
//! contract"). dyrep's own ops are checked with exactly these functions.
//!
//! ```ignore
//! use dyrep_api::testing::{assert_fusion_equivalent, fusion_case_for, proptest_config};
//! proptest::proptest! {
//!     #![proptest_config(proptest_config())]
//!     #[test]
//!     fn my_op_fuses(case in fusion_case_for(&MySpec::default())) {
//!         assert_fusion_equivalent(&MySpec::default(), &case)?;
//!     }
//! }
//! ```

use std::sync::Arc;

use candle_core::Device;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

use crate::equivalence::{
    check_block, check_op, BlockReport, FusionCase, NestPlan, RawCase, FUSION_TOLERANCE,
};
use crate::online_check::{check_online_block, OnlineReport};
use crate::op::OpSpec;

/// Proptest config: 64 cases (`PROPTEST_CASES`), a fixed seed unless `PROPTEST_RNG_SEED`
/// says otherwise (printed at the start of each test, so a failure shows how to replay it),
/// failing cases kept beside the test source (`dyrep_kernels::testing`).
pub fn proptest_config() -> Config {
    dyrep_kernels::testing::proptest_config(64)
}

/// Raw draws (shrinkable) for a case.
pub fn raw_case() -> impl Strategy<Value = RawCase> {
    (
        (0usize..3, 1usize..=2, 0usize..3, 1usize..=16, 1usize..=16),
        (
            any::<bool>(),
            0usize..5,
            5usize..=12,
            5usize..=12,
            1usize..=3,
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (k_index, stride, groups_kind, in_ch, out_ch),
                (same_padding, padding_raw, h, w, batch, seed),
            )| RawCase {
                k_index,
                stride,
                groups_kind,
                in_ch,
                out_ch,
                same_padding,
                padding_raw,
                h,
                w,
                batch,
                seed,
            },
        )
}

/// Any valid case: channels 1..16, groups 1 / 2 / depthwise, k ∈ {1, 3, 5}, stride 1 or 2,
/// padding k/2 or not, inputs 5..12 × 5..12 (odd, even, non-square), batch 1..3.
pub fn fusion_case() -> BoxedStrategy<FusionCase> {
    raw_case()
        .prop_filter_map("invalid geometry", |r| {
            r.to_case()
                .ok()
                .filter(|c| c.geom.output_hw(c.h, c.w).is_ok())
        })
        .boxed()
}

/// Cases whose geometry `spec` applies to.
pub fn fusion_case_for(spec: &dyn OpSpec) -> BoxedStrategy<FusionCase> {
    let spec: Arc<dyn OpSpec> = Arc::from(spec.clone_spec());
    fusion_case()
        .prop_filter("op not applicable to this geometry", move |c| {
            spec.check(&c.geom).is_ok()
        })
        .boxed()
}

/// Cases satisfying an arbitrary predicate on the geometry.
pub fn fusion_case_where(
    accept: impl Fn(&FusionCase) -> bool + 'static,
) -> BoxedStrategy<FusionCase> {
    fusion_case()
        .prop_filter("case rejected by predicate", move |c| accept(c))
        .boxed()
}

/// Asserts that the op built from `spec` in `case`'s geometry, with random weights and BN
/// statistics, gives the same eval-mode output as its equivalent k×k kernel
/// (max abs ≤ 1e-4, relative ≤ 1e-5, f32).
pub fn assert_fusion_equivalent(spec: &dyn OpSpec, case: &FusionCase) -> Result<(), TestCaseError> {
    let cmp = check_op(spec, case, &Device::Cpu)
        .map_err(|e| TestCaseError::fail(format!("{}: {e}", spec.name())))?;
    if !cmp.within(&FUSION_TOLERANCE) {
        return Err(TestCaseError::fail(format!(
            "{} on {} input {}x{}: max abs {:.3e}, rel {:.3e} (limits {:.0e}, {:.0e})",
            spec.name(),
            case.geom,
            case.h,
            case.w,
            cmp.max_abs,
            cmp.rel,
            FUSION_TOLERANCE.max_abs,
            FUSION_TOLERANCE.rel
        )));
    }
    Ok(())
}

/// Asserts the block contract for `main` + `branches` (grown from a plain conv, nested slots
/// grown per `nest`): growing and cutting keep the output, the block fuses exactly and fusion
/// is idempotent. Returns the report for further checks.
pub fn assert_block_fusion_equivalent(
    main: &dyn OpSpec,
    branches: &[Box<dyn OpSpec>],
    nest: &[NestPlan],
    case: &FusionCase,
) -> Result<BlockReport, TestCaseError> {
    let r = check_block(main, branches, nest, case, &Device::Cpu)
        .map_err(|e| TestCaseError::fail(format!("block on {}: {e}", case.geom)))?;
    if !r.passed() {
        return Err(TestCaseError::fail(format!(
            "block {:?} on {} input {}x{}: {r:?}",
            r.branches, case.geom, case.h, case.w
        )));
    }
    Ok(r)
}

/// Asserts the online form's contract for `main` + `branches` (nested per `nest`): grow and cut
/// keep the training output, the fused conv equals the online block, and the online forward and
/// every branch tensor's gradient equal the f64 branch-by-branch composition within the derived
/// bound (`online_check`). Returns the report for further checks.
pub fn assert_online_equivalent(
    main: &dyn OpSpec,
    branches: &[Box<dyn OpSpec>],
    nest: &[NestPlan],
    case: &FusionCase,
) -> Result<OnlineReport, TestCaseError> {
    let r = check_online_block(main, branches, nest, case, &Device::Cpu)
        .map_err(|e| TestCaseError::fail(format!("online block on {}: {e}", case.geom)))?;
    if !r.passed() {
        return Err(TestCaseError::fail(format!(
            "online block {:?} on {} input {}x{} batch {}: {r:?}",
            r.branches, case.geom, case.h, case.w, case.batch
        )));
    }
    Ok(r)
}
