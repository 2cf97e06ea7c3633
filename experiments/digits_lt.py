"""Real handwritten digits, made long-tailed, as an image-folder dataset.

Usage: python experiments/digits_lt.py OUT_DIR [--imb-factor 20] [--size 16]

The images are scikit-learn's bundled copy of the UCI "Optical Recognition
of Handwritten Digits" test set (1,797 scans of 8x8 pixels with 17 grey
levels, written by 43 people), not generated ones. Per class, a seeded
shuffle keeps 45 images for a balanced test split and up to 125 for
training; the training split is then cut to the authors' exponential
profile (data_loader/imbalance_cifar.py): class i keeps
int(125 * (1/IF)^(i/9)) images. Images are scaled to SIZE x SIZE (bilinear)
and written as PNG under OUT_DIR/train/<class>/ and OUT_DIR/val/<class>/,
which `DATA.DATASET: image-folder` reads.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

TEST_PER_CLASS = 45
TRAIN_MAX = 125


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--imb-factor", type=float, default=20.0)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    digits = load_digits()
    images, labels = digits.images, digits.target
    rng = np.random.default_rng(a.seed)
    counts = {}
    for split in ("train", "val"):
        for c in range(10):
            (a.out / split / f"{c}").mkdir(parents=True, exist_ok=True)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        test, rest = idx[:TEST_PER_CLASS], idx[TEST_PER_CLASS:TEST_PER_CLASS + TRAIN_MAX]
        keep = int(TRAIN_MAX * (1.0 / a.imb_factor) ** (c / 9.0))
        train = rest[:keep]
        counts[c] = len(train)
        for split, chosen in (("train", train), ("val", test)):
            for i in chosen:
                pixels = (images[i] * (255.0 / 16.0)).round().astype(np.uint8)
                img = Image.fromarray(pixels).resize((a.size, a.size), Image.BILINEAR)
                img.convert("RGB").save(a.out / split / f"{c}" / f"{i:04d}.png")
    (a.out / "counts.json").write_text(json.dumps(counts))
    print(f"{a.out}: train {sum(counts.values())} images {list(counts.values())}, "
          f"test {10 * TEST_PER_CLASS} (45 per class), {a.size}x{a.size}")


if __name__ == "__main__":
    main()
