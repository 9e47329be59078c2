#!/usr/bin/env python3
"""An ImageNet-like image folder for `dyrep bench data` and benches/peer/databench.py: CIFAR-10
JPEGs upscaled to random sizes of 300-500 px (bicubic, JPEG quality 90), N_TRAIN training and
N_TEST test images per class, seeded.

    python3 benches/peer/make_imagenet_like.py SRC_CIFAR_FOLDER OUT_DIR [N_TRAIN] [N_TEST]

SRC_CIFAR_FOLDER has train/<class>/*.jpg and test/<class>/*.jpg (the CIFAR-10 JPEG copy)."""
import os
import random
import sys

from PIL import Image


def main():
    src, out = sys.argv[1], sys.argv[2]
    n_train = int(sys.argv[3]) if len(sys.argv) > 3 else 250
    n_test = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    rng = random.Random(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in sorted(os.listdir(os.path.join(src, split))):
            files = sorted(os.listdir(os.path.join(src, split, cls)))[:n]
            os.makedirs(os.path.join(out, split, cls), exist_ok=True)
            for f in files:
                im = Image.open(os.path.join(src, split, cls, f)).convert("RGB")
                w, h = rng.randint(300, 500), rng.randint(300, 500)
                im.resize((w, h), Image.BICUBIC).save(
                    os.path.join(out, split, cls, f), quality=90
                )


if __name__ == "__main__":
    main()
