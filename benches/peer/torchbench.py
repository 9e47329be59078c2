#!/usr/bin/env python3
"""Peer benchmark: the `bench-small`, `bench-cifar` and `vgg16` (`--width W`) models of `dyrep bench`, in
PyTorch on the CPU with the same thread count, timed the same way (one warm-up iteration, then
N timed iterations of forward + cross-entropy + backward + SGD step, or eval forwards under
no_grad). Prints one JSON object with the keys of `dyrep bench --json`.

Not run in CI. Setup (outside the repository):
    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
Run interleaved with dyrep (see BENCHMARKS.md "Peer benchmark"):
    RAYON_NUM_THREADS=2 target/release/dyrep bench train --model bench-small --json
    /tmp/torchvenv/bin/python benches/peer/torchbench.py train --model bench-small --threads 2
"""

import argparse
import json
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MODELS = {
    # name: (input [C, H, W], widths, default batch)
    "bench-small": ([1, 28, 28], [32, 32, 64, 64, 128], 128),
    "bench-cifar": ([3, 32, 32], [64, 64, 128, 128, 256], 64),
    # dyrep's `vgg16` (the paper's CIFAR VGG-16), at `--width W`.
    "vgg16": ([3, 32, 32], None, 64),
}

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class BenchNet(nn.Module):
    """conv3x3(pad 1, no bias)+BN+ReLU x2, maxpool2, x2, maxpool2, x1, GAP, linear."""

    def __init__(self, cin, widths, classes=10):
        super().__init__()
        layers = []
        c = cin
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i in (1, 3):
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class Vgg16(nn.Module):
    """dyrep's vgg16: 13 x (conv3x3 pad 1, no bias + BN + ReLU) with 2x2 max pools after groups
    1-4, a 2x2 max pool of stride 1 after the last, then Linear -> 512w, ReLU, Linear -> 10.
    Channels scaled by `width` and rounded, as dyrep's width multiplier."""

    def __init__(self, cin, width, classes=10):
        super().__init__()
        ch = lambda c: max(1, round(c * width))
        layers, c = [], cin
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, ch(v), 3, padding=1, bias=False), nn.BatchNorm2d(ch(v)), nn.ReLU(inplace=True)]
                c = ch(v)
        layers.append(nn.MaxPool2d(2, stride=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(c, ch(512)), nn.ReLU(inplace=True), nn.Linear(ch(512), classes))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def macs_per_image(model, shape):
    total = 0
    hooks = []

    def conv_hook(m, inp, out):
        nonlocal total
        total += out.shape[1] * out.shape[2] * out.shape[3] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def lin_hook(m, inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["train", "eval"])
    ap.add_argument("--model", default="bench-small", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=float, default=1.0, help="channel width multiplier (vgg16)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    shape, widths, default_batch = MODELS[a.model]
    batch = a.batch or default_batch
    model = Vgg16(shape[0], a.width) if a.model == "vgg16" else BenchNet(shape[0], widths)
    macs = macs_per_image(model, shape)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        if a.what == "train":
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        else:
            model.eval()
            with torch.no_grad():
                model(x).sum().item()

    step()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        step()
    seconds = time.perf_counter() - t0
    images = batch * a.iters
    flops = 2 * macs * (3 if a.what == "train" else 1)
    print(json.dumps({
        "model": a.model, "width": a.width, "mode": "origin", "what": a.what, "input": shape, "batch": batch,
        "iters": a.iters, "seconds": seconds, "images_per_sec": images / seconds,
        "gflops": flops * images / seconds / 1e9, "macs_per_image": macs,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "kernels": "pytorch " + torch.__version__, "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
