"""Reference side of bench/cpu_train_step.sh: time timm's Swin training step
(forward, cross-entropy, backward, clip, AdamW) on random data. Prints JSON."""
import argparse, json, statistics, time

import torch
import yaml
from timm.models.swin_transformer import SwinTransformer

p = argparse.ArgumentParser()
p.add_argument("--cfg", required=True)
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--threads", type=int, default=0)
a = p.parse_args()
if a.threads > 0:
    torch.set_num_threads(a.threads)
cfg = yaml.safe_load(open(a.cfg))
m, s = cfg.get("MODEL", {}), cfg.get("MODEL", {}).get("SWIN", {})
img = cfg.get("DATA", {}).get("IMG_SIZE", 224)
torch.manual_seed(0)
model = SwinTransformer(
    img_size=img, patch_size=s.get("PATCH_SIZE", 4), in_chans=3, num_classes=1000,
    embed_dim=s.get("EMBED_DIM", 96), depths=s.get("DEPTHS", [2, 2, 6, 2]),
    num_heads=s.get("NUM_HEADS", [3, 6, 12, 24]), window_size=s.get("WINDOW_SIZE", 7),
    mlp_ratio=4.0, qkv_bias=True, drop_path_rate=m.get("DROP_PATH_RATE", 0.1))
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
x = torch.randn(a.batch_size, 3, img, img)
y = torch.randint(0, 1000, (a.batch_size,))
times = []
for i in range(a.warmup + a.steps):
    t = time.perf_counter()
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    loss.item()
    if i >= a.warmup:
        times.append((time.perf_counter() - t) * 1e3)
med = statistics.median(times)
print(json.dumps({"step_ms": times, "median_ms": med, "images_per_second": a.batch_size / (med / 1e3),
                  "params": sum(p.numel() for p in model.parameters())}))
