#!/usr/bin/env bash
# The CIFAR-10 reproduction grid of REPRODUCTION.md: origin, dbb, dyrep (synflow) x 3 seeds,
# repvgg and dyrep without Dep x 2, the scorer ablation (random, snip, grad_norm) x 2, and
# probes (a warm-up for origin, DBB and DyRep, seven of DyRep's settings on one seed and one of
# them on a second, the baselines' earlier initialisation), all with
# configs/repro/cifar10-vgg16-w025.toml, in the order of RUNS.
# Resumable at two levels:
#
# - across machines and sessions: every finished run's results (summary, metrics, events, the
#   resolved config, its log and the machine it ran on) are copied into benches/repro/results/
#   <name>/, which is committed; a run whose results are there is never run again. The binary is
#   built from the commit in benches/repro/PINNED, whatever machine a run lands on; every run's
#   machine.txt names the commit of each start and resume. The pin moved twice: when the
#   baselines got the reference's initialisation (`baseline_init`), and when `train` got the
#   `--warmup-epochs` flag the warm-up probes use; each new pin reproduces the published runs
#   bit for bit (REPRODUCTION.md "Protocol", benches/repro/diagnostics/pin-change).
# - within a session: a stopped run continues from its last checkpoint in $GRID (`dyrep train
#   --resume`, exact on the CPU), so the runner can be killed and started again any number of
#   times. A run cut off with its machine starts over on the next one.
#
#   GRID=/work/grid benches/repro/run.sh           # in the foreground
#   GRID=/work/grid nohup benches/repro/run.sh > /work/grid/runner.log 2>&1 &
#
# GRID (default ./grid-cifar10, outside version control) holds src/ and target/ (the pinned
# commit and its build), bin/dyrep, data/ (the CIFAR-10 JPEG copy extracted from ../shared/data
# unless CIFAR_DIR names one) and runs/<name>/ with the checkpoints. After every run it writes
# benches/repro/tables.{md,json} and groups.svg from every published result. ONLY=name1,name2
# runs just those runs; EXTRA adds flags to every new run and RESULTS moves the results folder
# (for a smoke test: EXTRA="--epochs 2 --train-limit 1000" RESULTS=/tmp/r/results). The probes'
# results go beside it, to benches/repro/probes/, so results/ holds the grid's runs only.
#
# DEF names the folder of the grid to run (default benches/repro, this grid): it holds PINNED
# (the commit to build), results/ and probes/ and the tables, and may hold CONFIG (the config
# file, relative to the repository root) and runs.txt (the RUNS below, one entry a line, `#`
# comments) in place of this file's. benches/repro2/ is the second round's (REPRODUCTION.md
# "Protocol 2"): DEF=benches/repro2 GRID=/work/grid2 benches/repro/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
DEF=$(cd "${DEF:-$ROOT/benches/repro}" && pwd)
GRID=${GRID:-$ROOT/grid-cifar10}
RESULTS=${RESULTS:-$DEF/results}
PROBES=$(dirname "$RESULTS")/probes
CONFIG=$ROOT/configs/repro/cifar10-vgg16-w025.toml
if [ -f "$DEF/CONFIG" ]; then
    CONFIG=$ROOT/$(tr -d '[:space:]' < "$DEF/CONFIG")
fi
mkdir -p "$GRID/bin" "$GRID/runs" "$RESULTS" "$PROBES"

exec 9>"$GRID/.lock"
if ! flock -n 9; then
    echo "run.sh: another runner holds $GRID/.lock" >&2
    exit 1
fi

# Every run, in the order they run: kind | name | flags on top of the config. `grid` runs are
# the paper's comparison (results/, grouped in tables.md); `probe` runs (REPRODUCTION.md
# "Probes") each change one setting of the grid's origin, dbb or dyrep run of their seed and are
# compared with it (probes/, a row each in probes.md), so the grid's groups stay the paper's.
# The first paired comparison comes first; three probes of DyRep's settings come before the snip
# and grad_norm ablation — whether DyRep's cost falls below DBB's without nested
# growth or with half the grows, and whether full-scale new branches move its accuracy, are what
# the grid's first 15 runs left open (REPRODUCTION.md "Reading so far").
RUNS=(
    "grid|origin-s0|--mode origin --seed 0"
    "grid|dbb-s0|--mode dbb --seed 0"
    "grid|dyrep-s0|--mode dyrep --seed 0"
    "grid|origin-s1|--mode origin --seed 1"
    "grid|dbb-s1|--mode dbb --seed 1"
    "grid|dyrep-s1|--mode dyrep --seed 1"
    "grid|origin-s2|--mode origin --seed 2"
    "grid|dbb-s2|--mode dbb --seed 2"
    "grid|dyrep-s2|--mode dyrep --seed 2"
    "grid|repvgg-s0|--mode repvgg --seed 0"
    "grid|repvgg-s1|--mode repvgg --seed 1"
    "grid|dyrep-nodep-s0|--mode dyrep --no-dep --seed 0"
    "grid|dyrep-nodep-s1|--mode dyrep --no-dep --seed 1"
    "grid|dyrep-random-s0|--mode dyrep --scorer random --seed 0"
    "grid|dyrep-random-s1|--mode dyrep --scorer random --seed 1"
    "probe|dyrep-depth1-s0|--mode dyrep --max-depth 1 --seed 0"
    "probe|dyrep-interval2-s0|--mode dyrep --grow-interval 2 --seed 0"
    "probe|dyrep-gamma1-s0|--mode dyrep --gamma0 1 --seed 0"
    # Growing every 2 epochs was the first setting to put DyRep's average MACs below DBB's
    # (0.90x on seed 0, 1.2 points below dyrep-s0): a second seed says whether that costs accuracy.
    "probe|dyrep-interval2-s1|--mode dyrep --grow-interval 2 --seed 1"
    "grid|dyrep-snip-s0|--mode dyrep --scorer snip --seed 0"
    "grid|dyrep-snip-s1|--mode dyrep --scorer snip --seed 1"
    "grid|dyrep-grad_norm-s0|--mode dyrep --scorer grad_norm --seed 0"
    "grid|dyrep-grad_norm-s1|--mode dyrep --scorer grad_norm --seed 1"
    # The rest of the causes the protocol asks to try on one seed (λ, top-k, calibration
    # batches) before the probes of the baselines and of DBB's operation set.
    "probe|dyrep-lambda03-s0|--mode dyrep --cut-threshold 0.3 --seed 0"
    "probe|dyrep-topk2-s0|--mode dyrep --grow-topk 2 --seed 0"
    "probe|dyrep-calib78-s0|--mode dyrep --calib-batches 78 --seed 0"
    # DBB's deficit starts in its first epoch (REPRODUCTION.md "DBB in PyTorch"): does a gentle
    # start (two epochs of linear warm-up from lr 0.01) remove it, and what does it do to origin?
    "probe|dbb-warmup2-s0|--mode dbb --warmup-epochs 2 --warmup-lr 0.01 --seed 0"
    "probe|origin-warmup2-s0|--mode origin --warmup-epochs 2 --warmup-lr 0.01 --seed 0"
    # Warm-up lifted origin and DBB by 8-9 points: does DyRep gain as much, and does its order
    # against them change once the start is gentle?
    "probe|dyrep-warmup2-s0|--mode dyrep --warmup-epochs 2 --warmup-lr 0.01 --seed 0"
    "probe|dyrep-dbbops-s0|--mode dyrep --ops conv1x1,conv1x1_kxk,conv1x1_avg --seed 0"
    # DBB and RepVGG as dyrep first built them (before `baseline_init` existed, the pinned
    # commit 5adcf66): the model's conv kept as the main branch, the new convs fan-out normal.
    # They ran in the grid's first round and are kept as what they are (REPRODUCTION.md, "The
    # baselines' earlier initialisation"); `--baseline-init fan_out` builds them again (checked
    # on the first epoch of seed 0: benches/repro/diagnostics/pin-change).
    "probe|dbb-fanout-s0|--mode dbb --baseline-init fan_out --seed 0"
    "probe|dbb-fanout-s1|--mode dbb --baseline-init fan_out --seed 1"
    "probe|dbb-fanout-s2|--mode dbb --baseline-init fan_out --seed 2"
    "probe|repvgg-fanout-s0|--mode repvgg --baseline-init fan_out --seed 0"
    "probe|repvgg-fanout-s1|--mode repvgg --baseline-init fan_out --seed 1"
)

# Another grid's runs (DEF/runs.txt) replace these.
if [ -f "$DEF/runs.txt" ]; then
    mapfile -t RUNS < <(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$DEF/runs.txt")
fi

# The names of the runs of one kind (`grid` or `probe`).
names_of_kind() {
    local entry
    for entry in "${RUNS[@]}"; do
        [ "${entry%%|*}" = "$1" ] && { entry=${entry#*|}; echo "${entry%%|*}"; }
    done
    return 0
}

# One binary for the whole grid: the pinned commit, built in $GRID.
PIN=$(tr -d '[:space:]' < "$DEF/PINNED")
if ! git cat-file -e "$PIN^{commit}" 2>/dev/null; then
    echo "run.sh: the pinned commit $PIN ($DEF/PINNED) is not in this clone; fetch it or pin another" >&2
    exit 1
fi
BIN=$GRID/bin/dyrep
if [ ! -x "$BIN" ] || [ "$(cat "$GRID/bin/COMMIT" 2>/dev/null)" != "$PIN" ]; then
    echo "run.sh: building the pinned commit $PIN"
    rm -rf "$GRID/src" "$BIN"
    mkdir -p "$GRID/src"
    git archive "$PIN" | tar -x -C "$GRID/src"
    CARGO_TARGET_DIR=$GRID/target cargo build --release -p dyrep-cli --manifest-path "$GRID/src/Cargo.toml"
    cp "$GRID/target/release/dyrep" "$BIN.tmp"
    mv "$BIN.tmp" "$BIN"
    echo "$PIN" > "$GRID/bin/COMMIT"
fi
echo "run.sh: binary $BIN from $PIN"

# The grid's first pin (5adcf66) predates the batching of small conv planes, which sums in
# another order; with it off, later pins train every mode they share with it to the same bits
# (REPRODUCTION.md "A note on bits"), so runs of either pin are of one protocol.
export DYREP_BATCH_SMALL_PLANES=0

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

# What a run leaves in the results folder: small text files only (no checkpoints), and
# machine.txt: a line per start or resume (date, commit, CPU, instruction-set tier).
KEEP=(summary.json metrics.csv movement.csv events.jsonl config.resolved.toml run.log)

# The machine a run (or a resumed part of it) ran on.
machine_line() {
    local cpu isa
    cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
    isa=$(grep -qw avx512f /proc/cpuinfo && echo avx512 || { grep -qw avx2 /proc/cpuinfo && echo avx2 || echo scalar; })
    echo "$(date -u +%FT%TZ) commit $PIN, $(nproc) cpus, $cpu, $isa${DYREP_ISA:+ (DYREP_ISA=$DYREP_ISA)}, DYREP_BATCH_SMALL_PLANES=$DYREP_BATCH_SMALL_PLANES"
}

# Copies a finished run's files into the results folder, all or nothing.
publish() {
    local name=$1 dir=$2 tmp dest
    dest=$(results_of "$name")
    tmp=$(mktemp -d "$dest/.$name.XXXXXX")
    for f in "${KEEP[@]}"; do
        [ -f "$dir/$f" ] && cp "$dir/$f" "$tmp/"
    done
    [ -f "$GRID/runs/$name.machine" ] && cp "$GRID/runs/$name.machine" "$tmp/machine.txt"
    rm -rf "${dest:?}/$name"
    mv "$tmp" "$dest/$name"
    echo "run.sh: $name published to $dest/$name (commit it)"
}

wanted() {
    [ -z "${ONLY:-}" ] && return 0
    case ",$ONLY," in *",$1,"*) return 0 ;; esac
    return 1
}

# The folder a run's results are published to: the probes' or the grid's.
results_of() {
    if names_of_kind probe | grep -xF "$1" > /dev/null; then echo "$PROBES"; else echo "$RESULTS"; fi
}

# The published runs among the named ones, as result folders.
published() {
    local name
    for name in "$@"; do
        [ -f "$(results_of "$name")/$name/summary.json" ] && echo "$(results_of "$name")/$name"
    done
    return 0
}

# Said under every generated table: what its train-time column measured.
time_note() {
    printf '\n%s\n' "Train time is the wall-clock time of each run on the 2-core machine it ran on; most runs shared their cores with builds or tests for part of the time, so it is the noisiest column. Average MACs are exact: REPRODUCTION.md states cost by them."
}

# The seeds of the named runs (their names end in -s<seed>), each once.
seeds_of() {
    local name
    for name in "$@"; do echo "${name##*-s}"; done | sort -un
}

# The grid's tables and chart (grouped by mode, scorer and Dep, against origin by seed) and the
# probes' table (a row per probe, after the grid's origin, dbb and dyrep runs of the probes'
# seeds, which the probes change one setting of), after each run and at the end.
write_tables() {
    local names probes finished out
    mapfile -t names < <(names_of_kind grid)
    mapfile -t probes < <(names_of_kind probe)
    out=$(dirname "$RESULTS")
    finished=$(published "${names[@]}")
    if [ -n "$finished" ]; then
        # Each group's cost against DBB's (the paper's claim) once a DBB run is in.
        local cost=()
        [ -n "$(published dbb-s0 dbb-s1 dbb-s2)" ] && cost=(--cost-vs dbb)
        # shellcheck disable=SC2086 # one argument per run directory
        "$BIN" -q compare $finished --group-by mode,scorer,dep --baseline origin "${cost[@]}" \
            --svg "$out/groups.svg" > "$out/tables.md"
        # shellcheck disable=SC2086
        "$BIN" -q compare $finished --group-by mode,scorer,dep --baseline origin "${cost[@]}" \
            --json --svg "$out/groups.svg" > "$out/tables.json"
        time_note >> "$out/tables.md"
        echo "run.sh: tables of $(echo "$finished" | wc -l) finished grid runs in $out/tables.md"
    fi
    finished=$(published "${probes[@]}")
    if [ -n "$finished" ]; then
        local seed baselines=()
        # shellcheck disable=SC2086 # one argument per run directory
        for seed in $(seeds_of $finished); do
            baselines+=("origin-s$seed" "dbb-s$seed" "dyrep-s$seed")
        done
        finished="$(published "${baselines[@]}") $finished"
        # shellcheck disable=SC2086
        "$BIN" -q compare $finished --svg "$out/probes.svg" > "$out/probes.md"
        time_note >> "$out/probes.md"
        # shellcheck disable=SC2086
        "$BIN" -q compare $finished --json --svg "$out/probes.svg" > "$out/probes.json"
        echo "run.sh: table of the probes in $out/probes.md"
    fi
}

for entry in "${RUNS[@]}"; do
    entry=${entry#*|}
    name=${entry%%|*}
    flags=${entry#*|}
    wanted "$name" || continue
    if [ -f "$(results_of "$name")/$name/summary.json" ]; then
        echo "run.sh: $name finished ($(head -1 "$(results_of "$name")/$name/machine.txt" 2>/dev/null || echo 'machine not recorded'))"
        continue
    fi
    dir=$GRID/runs/$name
    if [ ! -f "$dir/summary.json" ]; then
        if [ -d "$dir/checkpoints/last" ]; then
            echo "run.sh: $name resumes ($(date -u +%FT%TZ))"
            machine_line >> "$GRID/runs/$name.machine"
            "$BIN" train --resume "$dir"
        else
            echo "run.sh: $name starts ($(date -u +%FT%TZ))"
            machine_line > "$GRID/runs/$name.machine"
            # shellcheck disable=SC2086 # the flags are words
            "$BIN" train -c "$CONFIG" --data "image-folder:$DATA" --out "$dir" --force $flags ${EXTRA:-}
        fi
    fi
    publish "$name" "$dir"
    write_tables
done

write_tables
