#!/usr/bin/env bash
# The CIFAR-10 reproduction grid of REPRODUCTION.md: origin, dbb, dyrep (synflow) x 3 seeds,
# repvgg and dyrep without Dep x 2, the scorer ablation (random, snip, grad_norm) x 2, all with
# configs/repro/cifar10-vgg16-w025.toml. Resumable: a finished run (summary.json) is skipped, a
# stopped one continues from its last checkpoint (`dyrep train --resume`, exact on the CPU), so
# the grid can be killed and started again any number of times. It ends by writing the tables.
#
#   GRID=/work/grid benches/repro/run.sh           # in the foreground
#   GRID=/work/grid nohup benches/repro/run.sh > /work/grid/runner.log 2>&1 &
#
# GRID (default ./grid-cifar10, outside version control) holds bin/dyrep (the binary, pinned
# on the first start: one binary for the whole grid; its commit is in bin/COMMIT), data/ (the
# CIFAR-10 JPEG copy extracted from ../shared/data unless CIFAR_DIR names one), runs/<name>/,
# tables.md, tables.json and groups.svg. ONLY=name1,name2 runs just those runs; EXTRA adds
# flags to every new run (for a smoke test: EXTRA="--epochs 2 --train-limit 1000").
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
GRID=${GRID:-$ROOT/grid-cifar10}
CONFIG=$ROOT/configs/repro/cifar10-vgg16-w025.toml
mkdir -p "$GRID/bin" "$GRID/runs"

exec 9>"$GRID/.lock"
if ! flock -n 9; then
    echo "run.sh: another runner holds $GRID/.lock" >&2
    exit 1
fi

# One binary for the whole grid.
BIN=$GRID/bin/dyrep
if [ ! -x "$BIN" ]; then
    cargo build --release -p dyrep-cli
    cp target/release/dyrep "$BIN"
    git rev-parse HEAD > "$GRID/bin/COMMIT"
    git status --porcelain --untracked-files=no | grep -q . && echo "(with uncommitted changes)" >> "$GRID/bin/COMMIT"
fi
echo "run.sh: binary $BIN from $(head -1 "$GRID/bin/COMMIT")"

# The data.
DATA=${CIFAR_DIR:-$GRID/data}
if [ ! -d "$DATA/train" ]; then
    ARCHIVE=$ROOT/../shared/data/cifar10-jpg.tar.xz
    if [ ! -f "$ARCHIVE" ]; then
        echo "run.sh: no CIFAR-10 copy: set CIFAR_DIR to a folder with train/ and test/, or put cifar10-jpg.tar.xz in ../shared/data" >&2
        exit 1
    fi
    mkdir -p "$DATA"
    tar -xJf "$ARCHIVE" -C "$DATA"
fi

# name | flags on top of the config. In priority order: the first paired comparison first.
GRID_RUNS=(
    "origin-s0|--mode origin --seed 0"
    "dbb-s0|--mode dbb --seed 0"
    "dyrep-s0|--mode dyrep --seed 0"
    "origin-s1|--mode origin --seed 1"
    "dbb-s1|--mode dbb --seed 1"
    "dyrep-s1|--mode dyrep --seed 1"
    "origin-s2|--mode origin --seed 2"
    "dbb-s2|--mode dbb --seed 2"
    "dyrep-s2|--mode dyrep --seed 2"
    "repvgg-s0|--mode repvgg --seed 0"
    "repvgg-s1|--mode repvgg --seed 1"
    "dyrep-nodep-s0|--mode dyrep --no-dep --seed 0"
    "dyrep-nodep-s1|--mode dyrep --no-dep --seed 1"
    "dyrep-random-s0|--mode dyrep --scorer random --seed 0"
    "dyrep-random-s1|--mode dyrep --scorer random --seed 1"
    "dyrep-snip-s0|--mode dyrep --scorer snip --seed 0"
    "dyrep-snip-s1|--mode dyrep --scorer snip --seed 1"
    "dyrep-grad_norm-s0|--mode dyrep --scorer grad_norm --seed 0"
    "dyrep-grad_norm-s1|--mode dyrep --scorer grad_norm --seed 1"
)

wanted() {
    [ -z "${ONLY:-}" ] && return 0
    case ",$ONLY," in *",$1,"*) return 0 ;; esac
    return 1
}

for entry in "${GRID_RUNS[@]}"; do
    name=${entry%%|*}
    flags=${entry#*|}
    wanted "$name" || continue
    dir=$GRID/runs/$name
    if [ -f "$dir/summary.json" ]; then
        echo "run.sh: $name finished"
        continue
    fi
    if [ -d "$dir/checkpoints/last" ]; then
        echo "run.sh: $name resumes ($(date -u +%FT%TZ))"
        "$BIN" train --resume "$dir"
    else
        echo "run.sh: $name starts ($(date -u +%FT%TZ))"
        # shellcheck disable=SC2086 # the flags are words
        "$BIN" train -c "$CONFIG" --data "image-folder:$DATA" --out "$dir" --force $flags ${EXTRA:-}
    fi
done

finished=$(find "$GRID/runs" -name summary.json | sed 's|/summary.json||' | sort)
if [ -n "$finished" ]; then
    # shellcheck disable=SC2086 # one argument per run directory
    "$BIN" -q compare $finished --group-by mode,scorer,dep --baseline origin \
        --svg "$GRID/groups.svg" > "$GRID/tables.md"
    # shellcheck disable=SC2086
    "$BIN" -q compare $finished --group-by mode,scorer,dep --baseline origin \
        --svg "$GRID/groups.svg" --json > "$GRID/tables.json"
    echo "run.sh: tables of $(echo "$finished" | wc -l) finished runs in $GRID/tables.md"
fi
