#!/usr/bin/env bash
# Runs dyrep bench and the PyTorch peer script interleaved (dyrep, torch, dyrep, torch, ...) on
# the models in MODELS (default bench-small and bench-cifar; `vgg16@0.25` = vgg16 at --width 0.25), train and eval, and prints medians and the dyrep/PyTorch ratio.
# Not run in CI. Needs a release build and a PyTorch venv (see torchbench.py):
#   cargo build --release -p dyrep-cli
#   ROUNDS=5 PYTHON=/tmp/torchvenv/bin/python benches/peer/interleave.sh
# Run it on a quiet machine: two CPU-heavy jobs at once each run half as fast.
# ISA=avx2 runs both sides at the AVX2 tier on an AVX-512 CPU: DYREP_ISA=avx2 for dyrep (its
# own SIMD kernels; the gemm crate keeps its own dispatch) and ATEN_CPU_CAPABILITY=avx2
# ONEDNN_MAX_CPU_ISA=AVX2 for PyTorch. ISA=scalar caps dyrep only (PyTorch has no such tier).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-2}
BIN=${DYREP_BIN:-target/release/dyrep}
export RAYON_NUM_THREADS=$THREADS
ISA=${ISA:-}
if [ -n "$ISA" ]; then
    export DYREP_ISA=$ISA
    if [ "$ISA" = avx2 ]; then
        export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
    fi
fi
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs); dyrep tier: $("$BIN" bench eval --model bench-small --batch 2 --iters 1 --json | "$PYTHON" -c 'import json,sys; d=json.load(sys.stdin); print(d["isa"], "direct conv", d["direct_conv"])'); torch: $("$PYTHON" -c 'import torch; print(torch.__version__, torch.backends.cpu.get_cpu_capability())')" >&2
out=$(mktemp)
# MODELS: the models compared; `vgg16@0.25` is dyrep's vgg16 at `--width 0.25`.
MODELS=${MODELS:-bench-small bench-cifar}
for round in $(seq "$ROUNDS"); do
    for spec in $MODELS; do
        model=${spec%@*}
        width=1
        [ "$spec" != "$model" ] && width=${spec#*@}
        for what in train eval; do
            batch=""; [ "$what" = eval ] && batch="--batch 256"
            iters=8; [ "$model" = bench-cifar ] && iters=4
            "$BIN" bench "$what" --model "$model" --width "$width" $batch --iters "$iters" --json \
                | "$PYTHON" -c "import json,sys; d=json.load(sys.stdin); print('dyrep', '$spec', '$what', d['images_per_sec'], d['peak_rss_bytes'])" >> "$out"
            "$PYTHON" benches/peer/torchbench.py "$what" --model "$model" --width "$width" $batch --iters $((iters * 2)) --threads "$THREADS" \
                | "$PYTHON" -c "import json,sys; d=json.load(sys.stdin); print('torch', '$spec', '$what', d['images_per_sec'], d['peak_rss_bytes'])" >> "$out"
        done
    done
    echo "round $round/$ROUNDS done" >&2
done
"$PYTHON" - "$out" "$MODELS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(who, model, what, col):
    return statistics.median(float(r[col]) for r in rows if r[:3] == [who, model, what])
print("| model | what | dyrep img/s | PyTorch img/s | dyrep / PyTorch | dyrep peak RSS | PyTorch peak RSS |")
print("|---|---|---|---|---|---|---|")
for model in sys.argv[2].split():
    for what in ["train", "eval"]:
        d, t = med("dyrep", model, what, 3), med("torch", model, what, 3)
        dm, tm = med("dyrep", model, what, 4) / 1e6, med("torch", model, what, 4) / 1e6
        print(f"| {model} | {what} | {d:.0f} | {t:.0f} | {d / t:.2f}x | {dm:.0f} MB | {tm:.0f} MB |")
PY
rm -f "$out"
