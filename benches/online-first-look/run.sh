#!/usr/bin/env bash
# The online block form against the BN form and the plain network on the bundled data: vgg-tiny,
# the default 3-epoch recipe, seeds 0-2, interleaved by seed (BENCHMARKS.md "Online form").
#   benches/online-first-look/run.sh [DYREP_BINARY] [OUT]
set -euo pipefail
D=${1:-target/release/dyrep}
OUT=${2:-/tmp/online-first-look}
for s in 0 1 2; do
    "$D" train -q --mode origin --seed "$s" --out "$OUT/runs/origin-s$s"
    "$D" train -q --mode dyrep --seed "$s" --out "$OUT/runs/dyrep-bn-s$s"
    "$D" train -q --mode dyrep --block-form online --seed "$s" --out "$OUT/runs/dyrep-online-s$s"
done
"$D" compare "$OUT"/runs/* --group-by mode,block_form --baseline "origin block_form=bn" \
    --cost-vs "dyrep block_form=bn"
