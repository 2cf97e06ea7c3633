"""Generate N photo-like JPEGs of ImageNet-like sizes (shorter side 300–500,
aspect 3:4 to 16:9, quality 90, 4:2:0): smooth random colour fields with
edges, texture and noise, so the JPEG entropy is close to real photos."""
import os
import sys

import numpy as np
from PIL import Image


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        short = int(rng.integers(300, 501))
        aspect = float(rng.uniform(4 / 3, 16 / 9))
        w, h = (int(short * aspect), short) if rng.random() < 0.8 else (short, int(short * aspect))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.zeros((h, w, 3), np.float32)
        for _ in range(6):
            fx, fy = rng.uniform(0.002, 0.05, 2)
            ph = rng.uniform(0, 6.3, 3)
            amp = rng.uniform(20, 60, 3)
            for c in range(3):
                img[..., c] += amp[c] * np.sin(fx * xx + fy * yy + ph[c])
        for _ in range(8):  # hard-edged blobs
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, short / 3)
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            img[mask] = rng.uniform(-100, 100, 3)
        img += rng.normal(0, 12, img.shape)  # sensor noise / texture
        img = np.clip(img + 128, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(out, f"img_{i:04d}.jpg"), quality=90)


if __name__ == "__main__":
    main()
