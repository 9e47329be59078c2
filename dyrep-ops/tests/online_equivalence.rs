//! Property tests of the online block form (docs/REFERENCE.md "The online form") over every
//! registered op, a block of all seven and nested blocks: random geometry, random weights,
//! scales, shifts and batch-norm statistics (which the form must ignore); the f32 online block
//! (one conv with the assembled kernel) against the f64 branch-by-branch composition, forward
//! and the gradient of every branch tensor, within the derived bound of
//! `dyrep_api::online_check`; grow and cut keep the training output; the fused conv equals the
//! online block. Case count: `PROPTEST_CASES`.

mod registered;

use dyrep_api::equivalence::NestPlan;
use dyrep_api::testing::{
    assert_online_equivalent, fusion_case, fusion_case_for, fusion_case_where, proptest_config,
};
use proptest::prelude::*;
use registered::{all_seven_apply, branch_specs};

fn branch_and_case() -> impl Strategy<Value = (usize, dyrep_api::equivalence::FusionCase)> {
    let n = branch_specs().len();
    (0..n).prop_flat_map(|i| (Just(i), fusion_case_for(&*branch_specs()[i])))
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn every_registered_op_trains_online_as_its_branch_by_branch_composition(
        (i, case) in branch_and_case()
    ) {
        let spec = branch_specs().remove(i);
        let r = assert_online_equivalent(&*dyrep_ops::main_spec(), &[spec], &[], &case)?;
        prop_assert_eq!(r.branches.len(), 2, "{:?}", r.branches);
        prop_assert!(r.tensors_with_grad >= 2, "{r:?}");
    }

    #[test]
    fn block_with_all_seven_ops_trains_online_exactly(case in fusion_case_where(all_seven_apply)) {
        let r = assert_online_equivalent(&*dyrep_ops::main_spec(), &branch_specs(), &[], &case)?;
        prop_assert_eq!(r.branches.len(), 7, "{:?}", r.branches);
    }

    #[test]
    fn doubly_nested_online_blocks_train_exactly(case in fusion_case()) {
        let nest = [
            NestPlan { path: "convkxk.conv".into(), branches: branch_specs() },
            NestPlan { path: "conv1x1_kxk.conv2".into(), branches: branch_specs() },
            NestPlan { path: "convkxk.conv.conv1x1_kxk.conv2".into(), branches: branch_specs() },
        ];
        let r = assert_online_equivalent(&*dyrep_ops::main_spec(), &branch_specs(), &nest, &case)?;
        prop_assert_eq!(r.blocks, 4);
    }
}
