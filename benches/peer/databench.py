#!/usr/bin/env python3
"""The torchvision peer of `dyrep bench data`: ImageFolder + DataLoader(num_workers=N) with the
same training transform (RandomResizedCrop(size) bilinear, RandomHorizontalFlip, ToTensor,
Normalize with the ImageNet mean/std), batches of B, one warm-up batch then ITERS timed ones;
prints images/s and the peak RSS of the process and its workers.

    python3 benches/peer/databench.py DIR [--size 224] [--workers 2] [--batch 64] [--iters 20] [--json]
"""
import argparse
import json
import resource
import time

import torch
from torchvision import datasets, transforms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(a.size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    ds = datasets.ImageFolder(f"{a.dir}/train", tf)
    dl = torch.utils.data.DataLoader(
        ds, batch_size=a.batch, shuffle=True, num_workers=a.workers, drop_last=True
    )
    it = iter(dl)
    next(it)
    t0 = time.perf_counter()
    images = 0
    for _ in range(a.iters):
        x, _ = next(it)
        images += x.shape[0]
    secs = time.perf_counter() - t0
    rss = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    ) * 1024
    r = {
        "peer": "torchvision",
        "size": a.size,
        "workers": a.workers,
        "batch": a.batch,
        "images": images,
        "seconds": secs,
        "images_per_sec": images / secs,
        "peak_rss_bytes": rss,
    }
    if a.json:
        print(json.dumps(r))
    else:
        print(
            f"torchvision size {a.size} batch {a.batch} x{a.iters} on {a.workers} workers: "
            f"{r['images_per_sec']:.1f} images/s, peak RSS {rss / 1e6:.0f} MB (self + largest worker)"
        )


if __name__ == "__main__":
    main()
