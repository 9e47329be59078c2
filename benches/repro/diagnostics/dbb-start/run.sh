#!/usr/bin/env bash
# Does dyrep start the reference-initialised DBB baseline as PyTorch does? Trains the first
# epochs of the grid's dbb runs (configs/repro/cifar10-vgg16-w025.toml, --mode dbb) in dyrep and
# in PyTorch (benches/peer/torch_train_cifar.py --mode dbb) for each seed, one thread each, then
# prints per framework the mean ± std over seeds of each epoch's train loss, train accuracy and
# test accuracy. A run already in OUT with all its epochs is kept.
#
#   BIN=/work/grid/bin/dyrep PYTHON=/tmp/torchvenv/bin/python CIFAR_DIR=/work/data/cifar10 \
#       OUT=/work/diag/dbb-start benches/repro/diagnostics/dbb-start/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../../.."
: "${BIN:?set BIN to the dyrep binary}" "${PYTHON:?set PYTHON to a python with torch}"
: "${CIFAR_DIR:?set CIFAR_DIR}" "${OUT:?set OUT}"
SEEDS=${SEEDS:-3 4 5 6 7 8}
EPOCHS=${EPOCHS:-3}
export DYREP_BATCH_SMALL_PLANES=0
done_run() { [ -f "$1/metrics.csv" ] && [ "$(wc -l < "$1/metrics.csv")" -gt $(( 2 * EPOCHS )) ]; }
for s in $SEEDS; do
    done_run "$OUT/torch-s$s" || "$PYTHON" benches/peer/torch_train_cifar.py --mode dbb \
        --data "$CIFAR_DIR" --subset benches/peer/cifar10-subset-1000.txt --seed "$s" \
        --threads 1 --stop-after "$EPOCHS" --out "$OUT/torch-s$s"
    done_run "$OUT/dyrep-s$s" || "$BIN" -q train -c configs/repro/cifar10-vgg16-w025.toml \
        --mode dbb --seed "$s" --data "image-folder:$CIFAR_DIR" --stop-after "$EPOCHS" \
        --workers 1 --force --out "$OUT/dyrep-s$s"
done
python3 - "$OUT" "$EPOCHS" <<'PY'
import csv, glob, os, statistics, sys
out, epochs = sys.argv[1], int(sys.argv[2])
for fw in ("dyrep", "torch"):
    runs = sorted(glob.glob(os.path.join(out, f"{fw}-s*", "metrics.csv")))
    rows = [rs for rs in (list(csv.DictReader(open(r))) for r in runs) if len(rs) >= 2 * epochs]
    print(f"{fw}: {len(rows)} seeds")
    for e in range(1, epochs + 1):
        def col(split, key):
            return [float(r[key]) for rs in rows for r in rs if r["epoch"] == str(e) and r["split"] == split]
        cells = []
        for split, key, scale in (("train", "loss", 1), ("train", "acc", 100), ("test", "acc", 100)):
            v = [x * scale for x in col(split, key)]
            sd = statistics.stdev(v) if len(v) > 1 else float("nan")
            cells.append(f"{split} {key} {statistics.mean(v):.3f} ± {sd:.3f}")
        print(f"  epoch {e}: " + ", ".join(cells))
PY
