"""Reference for bench/transform.sh: the Swin/timm train transform
(RandomResizedCrop bicubic, flip, RandAugment rand-m9-mstd0.5-inc1, ToTensor,
Normalize, RandomErasing 0.25 pixel) built by timm on torchvision + PIL,
applied to every image of a folder on one thread, as one DataLoader worker
does (file open, PIL decode + convert('RGB'), transform). Prints JSON."""
import json
import os
import sys
import time

import torch
from PIL import Image
from timm.data import create_transform


def swin_train_transform(size):
    """The Swin-T LT config's train transform, as timm builds it."""
    return create_transform(
        input_size=size, is_training=True, color_jitter=0.4,
        auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, re_mode="pixel", re_count=1,
        interpolation="bicubic",
    )


def main():
    folder, rounds, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    tf = swin_train_transform(size)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for f in files:
            with open(f, "rb") as fh:
                img = Image.open(fh).convert("RGB")
            tf(img)
        times.append(time.perf_counter() - start)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({"images": len(files), "median_s": med, "images_per_second": len(files) / med}))


if __name__ == "__main__":
    main()
