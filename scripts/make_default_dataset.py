#!/usr/bin/env python3
"""Builds dyrep's bundled default dataset: a class-balanced subset of Fashion-MNIST.

Reads the four idx .gz files of the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist) and writes, in the same idx .gz format, the first
TRAIN_PER_CLASS training and TEST_PER_CLASS test images of every class, in file order, to
data/fashion-mnist-subset/. Deterministic (gzip mtime 0). Run once; the output is committed.
Fashion-MNIST is (c) 2017 Zalando SE, MIT licence (see data/fashion-mnist-subset/LICENSE).
"""
import gzip
import struct
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
DST = Path(__file__).resolve().parent.parent / "data" / "fashion-mnist-subset"
TRAIN_PER_CLASS = 800
TEST_PER_CLASS = 200


def read_idx(path):
    data = gzip.open(path, "rb").read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return magic, dims, data[4 + 4 * ndim:]


def write_idx(path, magic, dims, payload):
    header = struct.pack(">I", magic) + struct.pack(">" + "I" * len(dims), *dims)
    with open(path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(header + payload)


def subset(split, per_class):
    im_magic, im_dims, images = read_idx(SRC / f"{split}-images-idx3-ubyte.gz")
    lb_magic, lb_dims, labels = read_idx(SRC / f"{split}-labels-idx1-ubyte.gz")
    n, h, w = im_dims
    assert lb_dims[0] == n
    counts = [0] * 10
    keep = []
    for i, y in enumerate(labels):
        if counts[y] < per_class:
            counts[y] += 1
            keep.append(i)
    size = h * w
    out_images = b"".join(images[i * size:(i + 1) * size] for i in keep)
    out_labels = bytes(labels[i] for i in keep)
    write_idx(DST / f"{split}-images-idx3-ubyte.gz", im_magic, (len(keep), h, w), out_images)
    write_idx(DST / f"{split}-labels-idx1-ubyte.gz", lb_magic, (len(keep),), out_labels)
    print(f"{split}: {len(keep)} images, per class {counts}")


DST.mkdir(parents=True, exist_ok=True)
subset("train", TRAIN_PER_CLASS)
subset("t10k", TEST_PER_CLASS)
