//! Property tests of the fusion contract (docs/ARCHITECTURE.md "Numerics contract";
//! docs/REFERENCE.md "Fusion checks") over every registered op, over a block holding all seven, and
//! over nested blocks: random geometry, random weights, random BN statistics and affine parameters;
//! eval-mode multi-branch output vs fused conv within max abs 1e-4 and relative 1e-5 (f32); grow
//! and cut keep the output (relative 2e-5); fusion is idempotent. Case count: `PROPTEST_CASES`.

mod registered;

use dyrep_api::equivalence::NestPlan;
use dyrep_api::testing::{
    assert_block_fusion_equivalent, assert_fusion_equivalent, fusion_case, fusion_case_for,
    fusion_case_where, proptest_config,
};
use proptest::prelude::*;
use registered::{all_seven_apply, branch_specs, registered};

fn op_and_case() -> impl Strategy<Value = (usize, dyrep_api::equivalence::FusionCase)> {
    let n = registered().len();
    (0..n).prop_flat_map(|i| (Just(i), fusion_case_for(&*registered()[i])))
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn every_registered_op_fuses_exactly((i, case) in op_and_case()) {
        let specs = registered();
        assert_fusion_equivalent(&*specs[i], &case)?;
    }

    #[test]
    fn block_with_all_seven_ops_fuses_exactly(case in fusion_case_where(all_seven_apply)) {
        let r = assert_block_fusion_equivalent(&*dyrep_ops::main_spec(), &branch_specs(), &[], &case)?;
        prop_assert_eq!(r.branches.len(), 7, "{:?}", r.branches);
    }

    #[test]
    fn block_with_every_applicable_op_fuses_exactly(case in fusion_case()) {
        let r = assert_block_fusion_equivalent(&*dyrep_ops::main_spec(), &branch_specs(), &[], &case)?;
        // The reduced set {conv1x1_kxk, conv1x1_avg, convkxk} applies to every geometry.
        prop_assert!(r.branches.len() >= 3);
        if !case.geom.is_same_padding() {
            prop_assert_eq!(r.branches.len(), 3, "{:?}", r.branches);
        }
    }

    #[test]
    fn nested_main_conv_block_fuses_exactly(case in fusion_case()) {
        let nest = [NestPlan { path: "convkxk.conv".into(), branches: branch_specs() }];
        let r = assert_block_fusion_equivalent(&*dyrep_ops::main_spec(), &branch_specs(), &nest, &case)?;
        prop_assert_eq!(r.blocks, 2);
    }

    #[test]
    fn nested_conv1x1_kxk_second_conv_fuses_exactly(case in fusion_case()) {
        let nest = [NestPlan { path: "conv1x1_kxk.conv2".into(), branches: branch_specs() }];
        let r = assert_block_fusion_equivalent(&*dyrep_ops::main_spec(), &branch_specs(), &nest, &case)?;
        prop_assert_eq!(r.blocks, 2);
    }

    #[test]
    fn doubly_nested_blocks_fuse_exactly(case in fusion_case()) {
        let nest = [
            NestPlan { path: "convkxk.conv".into(), branches: branch_specs() },
            NestPlan { path: "conv1x1_kxk.conv2".into(), branches: branch_specs() },
            NestPlan { path: "convkxk.conv.conv1x1_kxk.conv2".into(), branches: branch_specs() },
        ];
        let r = assert_block_fusion_equivalent(&*dyrep_ops::main_spec(), &branch_specs(), &nest, &case)?;
        prop_assert_eq!(r.blocks, 4);
    }
}
