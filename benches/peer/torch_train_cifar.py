#!/usr/bin/env python3
"""The reproduction's plain recipe in PyTorch: `origin` of configs/repro/cifar10-vgg16-w025.toml
(VGG-16 at width 0.25 on 1,000 images per class of the CIFAR-10 JPEG copy, the full test set,
40 epochs, batch 128, SGD 0.9 without Nesterov, lr 0.1 cosine per step to 1e-6, weight decay
1e-4 on every parameter, crop 32 pad 4, flip, Cutout 16), written so its run folder reads like a
dyrep run's (metrics.csv, summary.json, config.resolved.toml) and `dyrep compare` groups it.

It answers one question about REPRODUCTION.md's results: whether the plain network's accuracy
and its spread over seeds are a property of the protocol or of dyrep's trainer. Everything but
the framework is dyrep's: the same training images (`--subset`, the within-class positions that
dyrep's seeded class-balanced subset keeps; see below), normalisation by the subset's channel
statistics, zero padding as a zero pixel normalised like the others, Cutout after normalisation
(centre uniform, square clipped at the borders), the last partial batch dropped, the lr of step
s (0-based) min + (max - min)(1 + cos(pi s / total)) / 2, PyTorch's BN (momentum 0.1, eps 1e-5),
convs from N(0, 2 / (k^2 C_out)), linear layers from U(+-1/sqrt(out)) with zero bias. The random
streams (initial weights, data order, augmentation) are PyTorch's, so seed s here and seed s of
dyrep are different draws: compare groups, not pairs.

Not run in CI. Setup and use (outside the repository; the torch venv of BENCHMARKS.md):
    /tmp/torchvenv/bin/pip install torch numpy pillow
    /tmp/torchvenv/bin/python benches/peer/torch_train_cifar.py --data /work/data/cifar10 \
        --subset benches/peer/cifar10-subset-1000.txt --seed 0 --out /work/torch/origin-s0 [--resume]
    dyrep compare /work/torch/origin-s* --group-by mode

`--subset` holds ten lines, one per class in sorted class order, each the positions (0-based,
among that class's training files sorted by name) of the images dyrep's `--train-limit 10000`
keeps: per class, positions 0..4999 shuffled by dyrep's SeededRng for the purpose
"subset:<class>" with seed 0 (Fisher-Yates from the back, as `Split::balanced_subset`), first
1,000 kept. The unit test `the_peer_subset_file_is_the_reproductions_training_subset`
(dyrep-runtime) checks benches/peer/cifar10-subset-1000.txt against that rule.

`--mode dbb` trains the reproduction's DBB baseline instead, as the reference's `--dbb` builds it
(docs/REFERENCE.md "Baselines"): every 3x3 conv and the BN after it become one block of four
branches, each ending in its own BN (1x1; 1x1 then 3x3; 1x1 then 3x3 average pooling; 3x3 with
a bias), summed; the model's BN becomes an identity; every conv of the block keeps PyTorch's
default initialisation and every BN starts at gamma 1, beta 0. The 1x1 -> 3x3 and 1x1 -> avg
branches pad the 1x1's BN output with that BN's eval-mode value of a zero input (running
statistics, no gradient), so each branch equals one 3x3 conv on the zero-padded input.
"""

import argparse
import csv
import io
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

# The network as `benches/peer/torchbench.py` defines it (the script's folder is on sys.path).
from torchbench import Vgg16 as BenchVgg16
from torchbench import macs_per_image


class Vgg16(BenchVgg16):
    """dyrep's vgg16 (the paper's CIFAR VGG-16) at `width`, with dyrep's initialisation."""

    def __init__(self, width, classes=10):
        super().__init__(3, width, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (k * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)


class BnAndPad(nn.BatchNorm2d):
    """BN, then `pad` pixels on every side holding the BN's eval-mode output for a zero input."""

    def __init__(self, channels, pad):
        super().__init__(channels)
        self.pad = pad

    def forward(self, x):
        out = super().forward(x)
        fill = (self.bias - self.weight * self.running_mean / torch.sqrt(self.running_var + self.eps)).detach()
        fill = fill.view(1, -1, 1, 1)
        return F.pad(out - fill, (self.pad,) * 4) + fill


class ReferenceDbb(nn.Module):
    """The reference's DBB baseline block for a 3x3 conv of stride 1, pad 1, groups 1; convs
    keep PyTorch's default initialisation."""

    def __init__(self, cin, cout):
        super().__init__()
        self.dbb_1x1 = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.dbb_1x1_kxk = nn.Sequential(
            nn.Conv2d(cin, cin, 1, bias=False), BnAndPad(cin, 1),
            nn.Conv2d(cin, cout, 3, bias=False), nn.BatchNorm2d(cout),
        )
        self.dbb_1x1_avg = nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False), BnAndPad(cout, 1),
            nn.AvgPool2d(3, stride=1), nn.BatchNorm2d(cout),
        )
        self.dbb_kxk = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=True), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.dbb_1x1(x) + self.dbb_1x1_kxk(x) + self.dbb_1x1_avg(x) + self.dbb_kxk(x)


def to_reference_dbb(model):
    """Every 3x3 conv of `model.features` and the BN after it -> ReferenceDbb, Identity."""
    layers = list(model.features)
    for i, m in enumerate(layers):
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            assert isinstance(layers[i + 1], nn.BatchNorm2d), "a 3x3 conv without a BN after it"
            layers[i] = ReferenceDbb(m.in_channels, m.out_channels)
            layers[i + 1] = nn.Identity()
    model.features = nn.Sequential(*layers)
    return model


def read_split(root, classes, positions=None):
    """u8 images [N, 3, 32, 32] and labels of `root/<class>/*`, in class then name order;
    only `positions[class]` of each class when given (kept in file order, as dyrep does)."""
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(os.listdir(os.path.join(root, name)))
        keep = range(len(files)) if positions is None else sorted(positions[label])
        for i in keep:
            with Image.open(os.path.join(root, name, files[i])) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
            labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def load_data(data, subset):
    """The classes, the training subset and the test set of the image folder `data` as u8
    tensors with labels, and the subset's per-channel mean and std (as dyrep normalises)."""
    classes = sorted(d for d in os.listdir(os.path.join(data, "train")) if not d.startswith("."))
    with open(subset) as f:
        positions = [[int(t) for t in line.split()] for line in f if line.strip()]
    if len(positions) != len(classes):
        raise SystemExit(f"{subset}: {len(positions)} lines for {len(classes)} classes; one line per class")
    train = read_split(os.path.join(data, "train"), classes, positions)
    test = read_split(os.path.join(data, "test"), classes)
    flat = train[0].double().div(255.0).transpose(0, 1).reshape(3, -1)
    mean = flat.mean(1).float().view(1, 3, 1, 1)
    std = flat.std(1, unbiased=False).float().view(1, 3, 1, 1)
    return classes, train, test, mean, std


def augment(raw, mean, std, gen, pad=4, cutout=16):
    """Random crop with zero padding, horizontal flip, normalisation, then Cutout."""
    n, c, h, w = raw.shape
    padded = F.pad(raw.float(), (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    cy = torch.randint(0, h, (n,), generator=gen)
    cx = torch.randint(0, w, (n,), generator=gen)
    out = torch.empty(n, c, h, w)
    for i in range(n):
        img = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = img.flip(2) if flip[i] else img
    out = (out / 255.0 - mean) / std
    half = cutout // 2
    for i in range(n):
        y0, y1 = max(int(cy[i]) - half, 0), min(int(cy[i]) + cutout - half, h)
        x0, x1 = max(int(cx[i]) - half, 0), min(int(cx[i]) + cutout - half, w)
        out[i, :, y0:y1, x0:x1] = 0.0
    return out


def evaluate(model, images, labels, mean, std, batch=256):
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = (images[s : s + batch].float() / 255.0 - mean) / std
            y = labels[s : s + batch]
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
    return loss / len(images), correct / len(images)


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the CIFAR-10 image folder (train/, test/)")
    ap.add_argument("--subset", required=True, help="the within-class positions to train on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["origin", "dbb"], default="origin")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stop-after", type=int, help="stop after this many epochs (the schedule stays --epochs long)")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue from --out's checkpoint.pt (written after every epoch) where there is one; "
        "the run continues exactly as if it had not stopped",
    )
    ap.add_argument(
        "--config",
        help="the dyrep config this run follows, copied with its seed and mode into the run folder "
        "(default: the grid's <mode>-s0 run's)",
    )
    a = ap.parse_args()
    if a.config is None:
        a.config = os.path.join(os.path.dirname(__file__), f"../repro/results/{a.mode}-s0/config.resolved.toml")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed + 1_000_003)
    os.makedirs(a.out, exist_ok=True)

    classes, (train_x, train_y), (test_x, test_y), mean, std = load_data(a.data, a.subset)

    model = Vgg16(a.width, len(classes))
    if a.mode == "dbb":
        model = to_reference_dbb(model)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4)
    batch, lr_max, lr_min = 128, 0.1, 1e-6
    steps = len(train_x) // batch
    total = steps * a.epochs
    macs = macs_per_image(model, [3, 32, 32])

    with open(a.config) as f:
        cfg = f.read()
    set_line = {"seed = ": f"seed = {a.seed}", "mode = ": f'mode = "{a.mode}"'}
    cfg = "\n".join(next((v for k, v in set_line.items() if l.startswith(k)), l) for l in cfg.splitlines())
    write_atomic(
        os.path.join(a.out, "config.resolved.toml"),
        f"# PyTorch {torch.__version__} run of this config by benches/peer/torch_train_cifar.py\n{cfg}\n",
    )
    rows = [["epoch", "split", "loss", "acc", "lr", "params", "macs", "branches", "seconds"]]
    best, step, train_seconds, first_epoch, test_acc = 0.0, 0, 0.0, 1, 0.0
    checkpoint = os.path.join(a.out, "checkpoint.pt")
    if a.resume and os.path.exists(checkpoint):
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        rows, best, step, train_seconds = state["rows"], state["best"], state["step"], state["train_seconds"]
        first_epoch, test_acc = state["epoch"] + 1, state["test_acc"]
        print(f"resuming {a.out} after epoch {state['epoch']}", flush=True)
    for epoch in range(first_epoch, a.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(train_x), generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(steps):
            idx = order[b * batch : (b + 1) * batch]
            x = augment(train_x[idx], mean, std, gen)
            y = train_y[idx]
            lr = lr_min + (lr_max - lr_min) * (1 + math.cos(math.pi * step / total)) / 2
            for g in opt.param_groups:
                g["lr"] = lr
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
            step += 1
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        test_loss, test_acc = evaluate(model, test_x, test_y, mean, std)
        best = max(best, test_acc)
        common = [f"{lr:.6e}", params, macs, 0, f"{epoch_seconds:.3f}"]
        rows.append([epoch, "train", f"{loss_sum / seen:.6f}", f"{correct / seen:.6f}", *common])
        rows.append([epoch, "test", f"{test_loss:.6f}", f"{test_acc:.6f}", *common])
        print(f"epoch {epoch}/{a.epochs} train loss {loss_sum / seen:.4f} acc {correct / seen:.4f} "
              f"test acc {test_acc:.4f} ({train_seconds:.0f} s)", flush=True)
        table = io.StringIO(newline="")
        csv.writer(table).writerows(rows)
        write_atomic(os.path.join(a.out, "metrics.csv"), table.getvalue())
        state = {
            "epoch": epoch, "step": step, "best": best, "test_acc": test_acc, "rows": rows,
            "train_seconds": train_seconds, "model": model.state_dict(), "opt": opt.state_dict(),
            "gen": gen.get_state(),
        }
        torch.save(state, checkpoint + ".tmp")
        os.replace(checkpoint + ".tmp", checkpoint)
        if a.stop_after is not None and epoch >= a.stop_after:
            return

    summary = {
        "model": "vgg16",
        "mode": a.mode,
        "dataset": f"image-folder:{a.data}",
        "epochs": a.epochs,
        "seed": a.seed,
        "final_test_acc": test_acc,
        "best_test_acc": best,
        "avg_params": float(params),
        "avg_macs": float(macs),
        "final_params": params,
        "final_macs": macs,
        "train_seconds": train_seconds,
        "grows": 0,
        "cuts": 0,
        "framework": f"pytorch {torch.__version__}",
    }
    write_atomic(os.path.join(a.out, "summary.json"), json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
