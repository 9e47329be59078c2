#!/usr/bin/env python3
"""Is benches/peer/torch_train_cifar.py's DBB network the function dyrep trains? Loads a dyrep
`--mode dbb` checkpoint (vgg16, the reference form) into the PyTorch model of `--mode dbb` and
evaluates it on the test set in eval mode; the accuracy and loss must equal the ones dyrep
logged for that epoch. Prints both and exits 1 when they differ by more than the two decoders'
pixels explain: dyrep decodes the JPEGs with zune-jpeg, PIL with libjpeg-turbo, whose IDCTs can
differ by one level in a pixel, so up to 0.1 % of the argmaxes (10 of 10,000 images) and 1e-3 of
the loss are allowed. A wrong part (the pads filled with zeros instead of the BN's value, a
dropped bias, a swapped branch) moves the accuracy by points.

    PYTHONPATH=benches/peer /tmp/torchvenv/bin/python \\
        benches/repro/diagnostics/dbb-start/same_function.py RUN_DIR CIFAR_DIR
"""

import csv
import json
import os
import struct
import sys

import numpy as np
import torch

import torch_train_cifar as peer

BRANCH_PARTS = {
    "conv1x1.conv": "dbb_1x1.0",
    "conv1x1.bn": "dbb_1x1.1",
    "conv1x1_kxk.conv1": "dbb_1x1_kxk.0",
    "conv1x1_kxk.bn1": "dbb_1x1_kxk.1",
    "conv1x1_kxk.conv2": "dbb_1x1_kxk.2",
    "conv1x1_kxk.bn2": "dbb_1x1_kxk.3",
    "conv1x1_avg.conv": "dbb_1x1_avg.0",
    "conv1x1_avg.bn": "dbb_1x1_avg.1",
    "conv1x1_avg.avgbn": "dbb_1x1_avg.3",
    "convkxk.conv": "dbb_kxk.0",
    "convkxk.bn": "dbb_kxk.1",
}
CLASSIFIER = {"classifier.0": "classifier.0", "classifier.1": "classifier.2"}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {meta['dtype']}; this check reads F32 checkpoints")
        a, b = meta["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(body[a:b], dtype=np.float32).copy()).view(meta["shape"])
    return out


def torch_name(dyrep_name, unit_to_index):
    """dyrep's `features.<unit>.conv.<branch>.<part>.<param>` -> the PyTorch model's name."""
    for prefix, target in CLASSIFIER.items():
        if dyrep_name.startswith(prefix + "."):
            return target + dyrep_name[len(prefix) :]
    _, unit, conv, rest = dyrep_name.split(".", 3)
    if conv != "conv":
        raise SystemExit(f"unexpected parameter {dyrep_name}")
    branch_part, param = rest.rsplit(".", 1)
    return f"features.{unit_to_index[int(unit)]}.{BRANCH_PARTS[branch_part]}.{param}"


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    run, data = sys.argv[1], sys.argv[2]
    weights = read_safetensors(os.path.join(run, "checkpoints", "last", "model.safetensors"))
    with open(os.path.join(run, "checkpoints", "last", "state.json")) as f:
        state = json.load(f)
    epoch = state["epochs_done"]
    width = state["config"]["width"]

    model = peer.to_reference_dbb(peer.Vgg16(width, 10))
    blocks = [i for i, m in enumerate(model.features) if isinstance(m, peer.ReferenceDbb)]
    units = sorted({int(k.split(".")[1]) for k in weights if k.startswith("features.")})
    if len(units) != len(blocks):
        raise SystemExit(f"{run}: {len(units)} conv units in the checkpoint, {len(blocks)} DBB blocks in the model")
    unit_to_index = dict(zip(units, blocks))
    theirs = model.state_dict()
    mine = {torch_name(k, unit_to_index): v for k, v in weights.items()}
    missing = sorted(k for k in theirs if k not in mine and not k.endswith("num_batches_tracked"))
    extra = sorted(k for k in mine if k not in theirs)
    if missing or extra:
        raise SystemExit(f"names differ: missing {missing[:5]}, extra {extra[:5]}")
    for k, v in mine.items():
        if theirs[k].shape != v.shape:
            raise SystemExit(f"{k}: shape {tuple(v.shape)} in the checkpoint, {tuple(theirs[k].shape)} in the model")
    model.load_state_dict(mine, strict=False)

    _, _, (test_x, test_y), mean, std = peer.load_data(data, "benches/peer/cifar10-subset-1000.txt")
    loss, acc = peer.evaluate(model, test_x, test_y, mean, std)

    with open(os.path.join(run, "metrics.csv")) as f:
        logged = [r for r in csv.DictReader(f) if r["split"] == "test"]
    row = next((r for r in logged if int(r["epoch"]) == epoch), None)
    if row is None:
        raise SystemExit(f"{run}/metrics.csv: no test row for epoch {epoch}, the checkpoint's epoch")
    print(f"{run} epoch {row['epoch']}: dyrep test loss {float(row['loss']):.6f} acc {float(row['acc']):.4f}; "
          f"PyTorch on its weights: loss {loss:.6f} acc {acc:.4f}")
    same = abs(acc - float(row["acc"])) <= 1e-3 and abs(loss - float(row["loss"])) <= 1e-3 * max(1.0, loss)
    print("same function" if same else "DIFFERENT")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
