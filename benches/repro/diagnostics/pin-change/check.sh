#!/usr/bin/env bash
# Does a new pin train the grid's published runs to the same numbers? Runs the first epochs of
# origin-s0, dbb-s0 and repvgg-s0 (with `--baseline-init fan_out`, as the first pin built them,
# and with the reference's init, as the second pin does), dyrep-s0 and dyrep-nodep-s0 with
# small-plane batching off, and compares every logged loss, accuracy, lr, params, MACs and
# branch count, and dyrep's grow and cut events, with the published runs. A run not published
# yet is skipped with a line saying so.
#
#   BIN=target/release/dyrep CIFAR_DIR=/work/data/cifar10 OUT=/tmp/pin-check \
#       benches/repro/diagnostics/pin-change/check.sh
set -euo pipefail
cd "$(dirname "$0")/../../../.."
: "${BIN:?set BIN to the dyrep binary to check}" "${CIFAR_DIR:?set CIFAR_DIR}" "${OUT:?set OUT}"
export DYREP_BATCH_SMALL_PLANES=0
CONFIG=configs/repro/cifar10-vgg16-w025.toml
status=0
# name | epochs | published run | flags
for entry in \
    "origin-s0|2|results/origin-s0|--mode origin --seed 0" \
    "dbb-fanout-s0|1|probes/dbb-fanout-s0|--mode dbb --baseline-init fan_out --seed 0" \
    "repvgg-fanout-s0|1|probes/repvgg-fanout-s0|--mode repvgg --baseline-init fan_out --seed 0" \
    "dbb-s0|1|results/dbb-s0|--mode dbb --seed 0" \
    "repvgg-s0|1|results/repvgg-s0|--mode repvgg --seed 0" \
    "dyrep-s0|3|results/dyrep-s0|--mode dyrep --seed 0" \
    "dyrep-nodep-s0|3|results/dyrep-nodep-s0|--mode dyrep --no-dep --seed 0"; do
    IFS='|' read -r name epochs published flags <<< "$entry"
    if [ ! -f "benches/repro/$published/metrics.csv" ]; then
        echo "$name: not published yet, skipped"
        continue
    fi
    # shellcheck disable=SC2086 # the flags are words
    "$BIN" -q train -c $CONFIG --data "image-folder:$CIFAR_DIR" --out "$OUT/$name" --force \
        --stop-after "$epochs" $flags > "$OUT/$name.log" 2>&1
    rows=$(( 2 * epochs + 1 ))
    if diff <(cut -d, -f1-8 "$OUT/$name/metrics.csv") \
        <(head -n $rows "benches/repro/$published/metrics.csv" | cut -d, -f1-8) > /dev/null; then
        echo "$name: $epochs epoch(s) as published"
    else
        echo "$name: DIFFERS from benches/repro/$published"; status=1
    fi
    if [ -s "$OUT/$name/events.jsonl" ]; then
        python3 - "$OUT/$name/events.jsonl" "benches/repro/$published/events.jsonl" <<'PY' || status=1
import json, sys
# `ranking` is newer than the first pin; preserve_rel_err is a check of the restore computed
# beside training, not part of it.
skip = {"ranking", "preserve_rel_err"}
new = [json.loads(l) for l in open(sys.argv[1])]
old = [json.loads(l) for l in open(sys.argv[2])][: len(new)]
same = all({k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip} for a, b in zip(new, old))
print(f"  {len(new)} events {'as published' if same else 'DIFFER'}")
sys.exit(0 if same else 1)
PY
    fi
done
exit $status
