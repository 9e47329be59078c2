#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU, its driver and CUDA 13 libraries, and a
# `dyrep` built by scripts/build-cuda.sh (no Rust toolchain needed there). Under 8 minutes:
#   1. the fusion property checks on CUDA          (dyrep verify --all --device cuda)
#   2. every kernel on CUDA against the CPU kernels (dyrep verify --kernels --device cuda)
#   3. a short DyRep training on CUDA with grows and cuts, BN form and online form (the online
#      run fused and verified); every event's preserve_rel_err <= 2e-5
#   4. dyrep bench train/eval on CUDA and CPU for bench-cifar and vgg16
#   5. data-parallel training with NCCL: one rank; and one rank per GPU under mpirun where the
#      machine has several GPUs, mpirun exists and the binary was built with --mpi
# and prints one markdown table. Exit 1 if any check fails.
#
#   DYREP_BIN=target/cuda/release/dyrep scripts/gpu-check.sh
#   DYREP_BIN=target/cuda/dyrep.xz scripts/gpu-check.sh   # the compact copy (unpacked first)
# LD_LIBRARY_PATH must reach libcudart/libnvrtc/libcublas(Lt)/libcurand of CUDA 13 and NCCL's
# libnccl.so.2; if it does not, the script looks for pip-installed nvidia/cu13/lib and
# nvidia/nccl/lib (e.g. PyTorch's) and uses those.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=${DYREP_BIN:-target/cuda/release/dyrep}
WORK=${GPU_CHECK_DIR:-$(mktemp -d)}
# The compact copy build-cuda.sh writes (stripped, xz): unpacked into the work folder.
if [ "${BIN%.xz}" != "$BIN" ] && [ -f "$BIN" ]; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$BIN" "$WORK/dyrep" \
        || { echo "gpu-check: cannot unpack $BIN" >&2; exit 1; }
    chmod +x "$WORK/dyrep"
    BIN=$WORK/dyrep
fi
[ -x "$BIN" ] || { echo "gpu-check: $BIN not found; build it with scripts/build-cuda.sh or set DYREP_BIN" >&2; exit 1; }

# pip_lib SONAME SUBDIR: put a pip-installed nvidia/SUBDIR on LD_LIBRARY_PATH unless ldd finds SONAME.
pip_lib() {
    ldd "$BIN" | grep -q "$1 => /" && return 0
    ldd "$BIN" | grep -q "$1" || return 0 # not linked: nothing to find
    for py in python3 /usr/bin/python3; do
        lib=$("$py" -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], '$2'))" 2>/dev/null) || continue
        if [ -d "$lib" ]; then
            export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            echo "gpu-check: using $1 from $lib"
            return 0
        fi
    done
}
pip_lib libcublas.so.13 cu13/lib
pip_lib libnccl.so.2 nccl/lib
ldd "$BIN" | grep -E "not found" && { echo "gpu-check: libraries missing (see above); set LD_LIBRARY_PATH" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

status=0
row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3"; }
table=()

# 1. Fusion equivalence on CUDA.
t0=$(date +%s)
if "$BIN" --device cuda verify --all --cases 30 --seed 1 > "$WORK/verify.txt" 2>&1; then r=ok; else r=FAILED; status=1; fi
worst=$(awk '/^(conv|identity|block|nested)/ {print $3}' "$WORK/verify.txt" | sort -g | tail -1)
table+=("$(row "fusion equivalence on CUDA (verify --all, 30 cases/check)" "$r" "worst abs ${worst:-?}, $(( $(date +%s) - t0 )) s")")

# 2. Kernels: CUDA (candle ops) vs CPU (own kernels).
t0=$(date +%s)
if "$BIN" --device cuda verify --kernels --cases 40 --seed 1 > "$WORK/kernels.txt" 2>&1; then r=ok; else r=FAILED; status=1; fi
worst=$(awk 'NR > 3 && NF >= 4 {print $(NF-1)}' "$WORK/kernels.txt" | grep -E '^[0-9.e+-]+$' | sort -g | tail -1)
table+=("$(row "kernels CUDA vs CPU (verify --kernels, 40 cases)" "$r" "worst rel ${worst:-?}, $(( $(date +%s) - t0 )) s")")

# 3. Short DyRep training on CUDA with grows and cuts, in the BN form and in the online form
#    (docs/REFERENCE.md "The online form"); the online run is then fused and verified.
dyrep_train_check() { # block form
    local form=$1 t0 run r grows cuts worst_pres acc
    t0=$(date +%s)
    run="$WORK/dyrep-run-$form"
    rm -rf "$run" "$run-fused"
    if "$BIN" --device cuda train --out "$run" --mode dyrep --block-form "$form" --epochs 3 \
        --grow-interval 1 --grow-topk 4 --cut-threshold 0.3 --train-limit 4000 --test-limit 1000 \
        --calib-batches 4 > "$WORK/train-$form.txt" 2>&1; then
        read -r grows cuts worst_pres acc < <(python3 - "$run" <<'EOF'
import json, sys
d = sys.argv[1]
ev = [json.loads(l) for l in open(d + "/events.jsonl")]
s = json.load(open(d + "/summary.json"))
print(sum(e["kind"] == "grow" for e in ev), sum(e["kind"] == "cut" for e in ev),
      max([e["preserve_rel_err"] for e in ev] or [0.0]), s["final_test_acc"])
EOF
        )
        if [ "${grows:-0}" -gt 0 ] && python3 -c "import sys; sys.exit(0 if float('${worst_pres:-1}') <= 2e-5 else 1)"; then r=ok; else r=FAILED; status=1; fi
        table+=("$(row "DyRep training on CUDA, $form form (3 epochs, vgg-tiny)" "$r" "$grows grows, $cuts cuts, worst preserve_rel_err $worst_pres, test acc $acc, $(( $(date +%s) - t0 )) s")")
    else
        status=1
        table+=("$(row "DyRep training on CUDA, $form form" "FAILED" "$(tail -1 "$WORK/train-$form.txt")")")
        return
    fi
    if [ "$form" = online ]; then
        if "$BIN" --device cuda fuse --checkpoint "$run" --out "$run-fused" --limit 500 \
            > "$WORK/fuse-$form.txt" 2>&1; then r=ok; else r=FAILED; status=1; fi
        table+=("$(row "fuse the online run on CUDA, verified" "$r" "$(grep -m1 'verified on' "$WORK/fuse-$form.txt" | cut -c1-120)")")
    fi
}
dyrep_train_check bn
dyrep_train_check online

# 4. Throughput, CUDA and CPU.
bench() { # model what device iters
    "$BIN" --device "$3" bench "$2" --model "$1" --iters "$4" --json 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print(f"{d[\"images_per_sec\"]:.0f} img/s, {d[\"gflops\"]:.0f} GFLOP/s, batch {d[\"batch\"]}")' \
        || echo "failed"
}
for model in bench-cifar vgg16; do
    for what in train eval; do
        gpu=$(bench "$model" "$what" cuda 20)
        cpu=$(bench "$model" "$what" cpu 2)
        table+=("$(row "bench $what $model" "cuda: $gpu" "cpu: $cpu")")
    done
done

# 5. Data-parallel training with NCCL.
nccl_train() { # ranks launcher...
    local n=$1; shift
    local run="$WORK/nccl-$n"
    rm -rf "$run"
    t0=$(date +%s)
    if "$@" "$BIN" --device cuda train --distributed --out "$run" --mode dyrep --epochs 2 \
        --grow-interval 1 --grow-topk 4 --train-limit 4000 --test-limit 1000 --calib-batches 4 \
        > "$WORK/nccl-$n.txt" 2>&1 && grep -q "gradients averaged by NCCL" "$WORK/nccl-$n.txt"; then
        acc=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["final_test_acc"])' "$run/summary.json")
        table+=("$(row "data-parallel DyRep on NCCL, $n rank(s)" "ok" "test acc $acc, $(( $(date +%s) - t0 )) s")")
    else
        status=1
        table+=("$(row "data-parallel DyRep on NCCL, $n rank(s)" "FAILED" "$(tail -1 "$WORK/nccl-$n.txt")")")
    fi
}
if ldd "$BIN" | grep -q libnccl; then
    nccl_train 1
    gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
    if [ "$gpus" -gt 1 ] && command -v mpirun >/dev/null && ldd "$BIN" | grep -q libmpi; then
        nccl_train "$gpus" mpirun --allow-run-as-root -np "$gpus"
    fi
else
    table+=("$(row "data-parallel on NCCL" "skipped" "$BIN was built without NCCL")")
fi

echo
echo "| check | result | details |"
echo "|---|---|---|"
printf '%s\n' "${table[@]}"
echo
echo "gpu-check: outputs in $WORK"
exit $status
