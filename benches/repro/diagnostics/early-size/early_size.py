#!/usr/bin/env python3
"""How large each DyRep run's network was early in training, against its accuracy.

For every published DyRep run (benches/repro/results/dyrep* and probes/dyrep*) this prints its
seed, its final test accuracy minus that of origin's run of the same seed and the same start
(same initial weights of the plain layers, data order, augmentation and warm-up: a DyRep run with
`--warmup-epochs` is read against origin's run with the same warm-up, and left out when there is
none), its training MACs at epoch 10, its average
training MACs over epochs 1-20 and over the whole run, and the Pearson correlation of each MACs
column with the accuracy difference across runs. Read with REPRODUCTION.md "Results": the runs
differ in more than their early size (scorer, depth, interval), so a correlation here is a
pattern to test, not a cause.

    python3 benches/repro/diagnostics/early-size/early_size.py [REPRO_DIR]

REPRO_DIR defaults to benches/repro. Only the standard library; reads each run's metrics.csv
(one train and one test row per epoch; `macs` is the training network's MACs per image in that
epoch), summary.json and config.resolved.toml.
"""

import csv
import glob
import json
import math
import os
import sys
import tomllib


def test_rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        return [row for row in csv.DictReader(f) if row["split"] == "test"]


def seed_of(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)["seed"]


def start_of(run_dir):
    """The run's seed and its start: warm-up epochs and the warm-up's first lr (none without)."""
    with open(os.path.join(run_dir, "config.resolved.toml"), "rb") as f:
        cfg = tomllib.load(f)
    warmup = cfg.get("warmup_epochs", 0)
    return (seed_of(run_dir), warmup, cfg.get("warmup_lr") if warmup else None)


def mean(xs):
    return sum(xs) / len(xs)


def pearson(xs, ys):
    mx, my = mean(xs), mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy)


def main():
    repro = sys.argv[1] if len(sys.argv) > 1 else "benches/repro"
    origin_final = {}
    for kind in ("results", "probes"):
        for run_dir in glob.glob(os.path.join(repro, kind, "origin-*")):
            origin_final[start_of(run_dir)] = float(test_rows(run_dir)[-1]["acc"])
    runs = sorted(glob.glob(os.path.join(repro, "results", "dyrep*")))
    runs += sorted(glob.glob(os.path.join(repro, "probes", "dyrep*")))
    table = []
    for run_dir in runs:
        start = start_of(run_dir)
        seed = start[0]
        rows = test_rows(run_dir)
        if start not in origin_final or len(rows) < 20:
            continue
        macs = [float(r["macs"]) / 1e6 for r in rows]
        delta = 100.0 * (float(rows[-1]["acc"]) - origin_final[start])
        table.append((os.path.basename(run_dir), seed, delta, macs[9], mean(macs[:20]), mean(macs)))
    if len(table) < 3:
        sys.exit(f"early_size.py: fewer than 3 DyRep runs with an origin run of their seed and start in {repro}")
    print("| run | seed | final Δ vs origin (points) | MACs at epoch 10 (M) | avg MACs, epochs 1-20 (M) | avg MACs (M) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seed, delta, m10, m20, mall in table:
        print(f"| {name} | {seed} | {delta:+.2f} | {m10:.1f} | {m20:.1f} | {mall:.1f} |")
    deltas = [t[2] for t in table]
    print()
    for col, label in ((3, "MACs at epoch 10"), (4, "avg MACs, epochs 1-20"), (5, "avg MACs")):
        r = pearson([t[col] for t in table], deltas)
        print(f"Pearson r of final Δ with {label}: {r:+.2f} (n = {len(table)})")


if __name__ == "__main__":
    main()
