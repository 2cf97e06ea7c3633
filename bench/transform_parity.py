"""Reference for bench/transform_parity.sh: the Swin reference's evaluation
transform (build_transform, is_train=False, TEST.CROP=True): Resize(int(S/0.875),
bicubic) + CenterCrop(S) + ToTensor + Normalize, on torchvision + PIL, compared
image by image with ride-trainer's output for the same files (a safetensors
dump from `ride-bench transform --eval --dump`). With --train, compares
the train transform's output statistics with timm's instead. Prints JSON."""
import json
import os
import random
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms
from torchvision_transform import swin_train_transform  # same folder: the timing reference

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def train_statistics(folder, dump, size):
    """The train transform is random, so compare distributions: per-channel
    mean and standard deviation of the normalised outputs over every image,
    ours (one pass) against timm's (three passes, seeded)."""
    ours = load_file(dump)["images"]
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    tf = swin_train_transform(size)
    theirs = []
    for seed in range(3):
        # timm's RandAugment picks ops with numpy and magnitudes with random.
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        for f in files:
            with open(f, "rb") as fh:
                theirs.append(tf(Image.open(fh).convert("RGB")))
    theirs = torch.stack(theirs)
    stats = lambda t: (t.mean(dim=(0, 2, 3)).tolist(), t.std(dim=(0, 2, 3)).tolist())
    (om, os_), (tm, ts) = stats(ours), stats(theirs)
    print(json.dumps({"images": len(files), "ours_mean": om, "ours_std": os_,
                      "timm_mean": tm, "timm_std": ts}))


def main():
    if sys.argv[1] == "--train":
        return train_statistics(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    folder, dump, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ours = load_file(dump)["images"]
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    assert len(files) == ours.shape[0], (len(files), ours.shape)
    tf = transforms.Compose([
        transforms.Resize(int(size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    std = torch.tensor(STD).view(3, 1, 1)
    max_levels, mean_levels, within_2 = [], [], []
    for i, f in enumerate(files):
        with open(f, "rb") as fh:
            ref = tf(Image.open(fh).convert("RGB"))
        # Differences in 8-bit grey levels: normalised difference × std × 255.
        d = ((ours[i] - ref).abs() * std * 255.0)
        max_levels.append(d.max().item())
        mean_levels.append(d.mean().item())
        within_2.append((d <= 2.0).float().mean().item())
    n = len(files)
    print(json.dumps({
        "images": n,
        "mean_abs_levels": sum(mean_levels) / n,
        "max_abs_levels": max(max_levels),
        "median_of_max_levels": sorted(max_levels)[n // 2],
        "share_within_2_levels": sum(within_2) / n,
    }))


if __name__ == "__main__":
    main()
