"""Reference side of the GPU check: time the authors' RIDE-Swin model
(bench/ride_swin_reference.py) training step in PyTorch eager mode: forward
(under torch.autocast with AMP), cross-entropy on the experts' mean logits,
backward (GradScaler with fp16), clip 5.0, AdamW. Same loss and step as
`ride-bench step`; the architecture comes from `ride-bench spec --cfg CFG`,
so both sides build the same model. Needs only torch. Prints JSON."""
import argparse
import json
import os
import statistics
import sys
import time

import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ride_swin_reference import from_spec  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--spec", required=True, help="JSON from `ride-bench spec --cfg CFG`")
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--device", default="cpu")
p.add_argument("--amp", choices=["none", "float16", "bfloat16"], default="none")
a = p.parse_args()
if a.threads > 0:
    torch.set_num_threads(a.threads)
spec = json.load(open(a.spec))
img, classes = spec["img_size"], spec["num_classes"]
dev = torch.device(a.device)
torch.manual_seed(0)
model = from_spec(spec).to(dev).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(a.amp)
scaler = torch.amp.GradScaler(dev.type) if a.amp == "float16" else None
x = torch.randn(a.batch_size, 3, img, img, device=dev)
y = torch.randint(0, classes, (a.batch_size,), device=dev)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats(dev)
times = []
for i in range(a.warmup + a.steps):
    sync()
    t = time.perf_counter()
    opt.zero_grad()
    with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
        out = model(x)
    loss = torch.nn.functional.cross_entropy(out.float().mean(1), y)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    loss.item()
    sync()
    if i >= a.warmup:
        times.append((time.perf_counter() - t) * 1e3)
med = statistics.median(times)
peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
print(json.dumps({"step_ms": times, "median_ms": med, "images_per_second": a.batch_size / (med / 1e3),
                  "peak_memory_bytes": peak, "loss": loss.item(),
                  "params": sum(p.numel() for p in model.parameters())}))
