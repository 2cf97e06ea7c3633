"""The authors' RIDE-Swin model (TonyLianLong/RIDE-Swin-LongTailRecognition,
models/swin_transformer.py) rebuilt in plain PyTorch for side-by-side runs:
same module tree and state-dict names, the same eager attention (explicit
softmax with the relative position bias and shift mask), branched expert
stages at 3/4 width, NormedLinear heads. Checked against the fixtures the
authors' own code produced: `python bench/ride_swin_reference.py --check DIR`.
"""
import argparse
import json
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


def drop_path(x, p, training):
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)


class Mlp(nn.Module):
    def __init__(self, dim, hidden, drop):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x, w):
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, w, w, c)


def window_reverse(windows, w, h, wd):
    b = int(windows.shape[0] / (h * wd / w / w))
    x = windows.view(b, h // w, wd // w, w, w, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, wd, -1)


class WindowAttention(nn.Module):
    def __init__(self, dim, window, heads, qkv_bias, qk_scale, attn_drop, proj_drop):
        super().__init__()
        self.window, self.heads = window, heads
        self.scale = qk_scale or (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
        flat = torch.flatten(coords, 1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += window - 1
        rel[:, :, 1] += window - 1
        rel[:, :, 0] *= 2 * window - 1
        self.register_buffer("relative_position_index", rel.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask=None):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class SwinBlock(nn.Module):
    def __init__(self, dim, res, heads, window, shift, mlp_ratio, qkv_bias, qk_scale, drop, dp):
        super().__init__()
        self.res = res
        if min(res) <= window:
            shift, window = 0, min(res)
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads, qkv_bias, qk_scale, 0.0, drop)
        self.drop_path = DropPath(dp)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = None
        if shift > 0:
            h, w = res
            img = torch.zeros((1, h, w, 1))
            cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
            region = 0
            for hs in cuts:
                for ws in cuts:
                    img[:, hs, ws, :] = region
                    region += 1
            windows = window_partition(img, window).view(-1, window * window)
            mask = windows.unsqueeze(1) - windows.unsqueeze(2)
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        self.register_buffer("attn_mask", mask)

    def forward(self, x):
        h, w = self.res
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = window_partition(x, self.window).view(-1, self.window * self.window, c)
        win = self.attn(win, mask=self.attn_mask).view(-1, self.window, self.window, c)
        x = window_reverse(win, self.window, h, w)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + self.drop_path(x.view(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    def __init__(self, res, dim, out_dim):
        super().__init__()
        self.res = res
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        h, w = self.res
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    def __init__(self, dim, res, depth, heads, window, mlp_ratio, qkv_bias, qk_scale, drop, dps, out_dim, checkpoint):
        super().__init__()
        self.checkpoint = checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(dim, res, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, qkv_bias, qk_scale, drop, dps[i])
            for i in range(depth))
        self.downsample = PatchMerging(res, dim, out_dim) if out_dim is not None else None

    def forward(self, x):
        for blk in self.blocks:
            if self.checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class BranchedLayer(nn.Module):
    def __init__(self, n, build):
        super().__init__()
        self.branches = nn.ModuleList(build() for _ in range(n))


class NormedLinear(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.Tensor(cin, cout))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x):
        return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


class RideSwin(nn.Module):
    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
                 depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop_rate=0.0, drop_path_rate=0.1, ape=False,
                 patch_norm=True, use_checkpoint=False, num_experts=2, branching_start=2,
                 use_normed_linear=True, force_original_feature_dim=False):
        super().__init__()
        n = len(depths)
        res = img_size // patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.patch_embed.norm = nn.LayerNorm(embed_dim) if patch_norm else None
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res * res, embed_dim)) if ape else None
        self.pos_drop = nn.Dropout(drop_rate)
        reduce = num_experts > 1 and not force_original_feature_dim

        def dim(i):
            d = embed_dim * 2 ** i
            return d * 3 // 4 if reduce and i >= branching_start else d

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        self.branched = []
        for i in range(n):
            r = res >> i
            branches = num_experts if (num_experts > 1 and i >= branching_start) else 1
            dps = dpr[sum(depths[:i]):sum(depths[:i + 1])]

            def build(i=i, r=r, dps=dps):
                return BasicLayer(dim(i), (r, r), depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias,
                                  qk_scale, drop_rate, dps, dim(i + 1) if i + 1 < n else None, use_checkpoint)

            self.layers.append(BranchedLayer(branches, build))
            self.branched.append(branches > 1)
        self.num_features = dim(n - 1)
        self.norm = nn.LayerNorm(self.num_features)
        make_head = (lambda: NormedLinear(self.num_features, num_classes)) if use_normed_linear \
            else (lambda: nn.Linear(self.num_features, num_classes))
        self.heads = nn.ModuleList(make_head() for _ in range(num_experts))
        self.num_experts = num_experts
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward_features(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        if self.patch_embed.norm is not None:
            x = self.patch_embed.norm(x)
        if self.absolute_pos_embed is not None:
            x = x + self.absolute_pos_embed
        paths = [self.pos_drop(x)]
        for layer, branched in zip(self.layers, self.branched):
            if branched:
                if len(paths) == 1:
                    paths = paths * len(layer.branches)
                paths = [b(p) for b, p in zip(layer.branches, paths)]
            else:
                paths = [layer.branches[0](p) for p in paths]
        if len(paths) == 1:
            paths = paths * self.num_experts
        return [torch.flatten(self.norm(p).transpose(1, 2).mean(-1, keepdim=True), 1) for p in paths]

    def forward(self, x):
        logits = torch.stack([h(f) for h, f in zip(self.heads, self.forward_features(x))], dim=1)
        return logits if self.training else logits.mean(1)


def load_safetensors(path):
    """float32 tensors of a safetensors file (no dependency beyond torch)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", f"{name}: {t['dtype']}"
        a, b = t["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(t["shape"])
    return out


def from_spec(spec):
    """The model of a `ride-bench spec` JSON (the trainer's resolved MODEL.* keys)."""
    return RideSwin(
        img_size=spec["img_size"], patch_size=spec["patch_size"], in_chans=spec["in_chans"],
        num_classes=spec["num_classes"], embed_dim=spec["embed_dim"], depths=spec["depths"],
        num_heads=spec["num_heads"], window_size=spec["window_size"], mlp_ratio=spec["mlp_ratio"],
        qkv_bias=spec["qkv_bias"], qk_scale=spec["qk_scale"], drop_rate=spec["drop_rate"],
        drop_path_rate=spec["drop_path_rate"], ape=spec["ape"], patch_norm=spec["patch_norm"],
        num_experts=spec["num_experts"], branching_start=spec["branching_start"],
        use_normed_linear=spec["use_normed_linear"],
        force_original_feature_dim=spec["force_original_feature_dim"])


def check_fixtures(root):
    """Load the authors' fixtures into this model; compare eval outputs."""
    load_file = load_safetensors
    worst = 0.0
    for name, normed, experts in (("tiny_ride2", True, 2), ("tiny_ce1", False, 1)):
        m = RideSwin(img_size=32, patch_size=2, num_classes=5, embed_dim=16, depths=(2, 2, 2, 2),
                     num_heads=(1, 2, 4, 8), window_size=4, drop_path_rate=0.1, num_experts=experts,
                     use_normed_linear=normed)
        state = torch.load(f"{root}/{name}.pth", map_location="cpu")
        m.load_state_dict(state, strict=True)
        io = load_file(f"{root}/{name}_io.safetensors")
        m.eval()
        with torch.no_grad():
            logits = m(io["input"])
            per_expert = torch.stack([h(f) for h, f in zip(m.heads, m.forward_features(io["input"]))], 1)
        params = sum(p.numel() for p in m.parameters())
        d = max((logits - io["logits"]).abs().max().item(), (per_expert - io["per_expert"]).abs().max().item())
        worst = max(worst, d)
        print(f"{name}: {params} parameters, max |difference| to the authors' outputs {d:.2e}")
    return worst


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--check", metavar="FIXTURES_DIR", required=True)
    a = p.parse_args()
    worst = check_fixtures(a.check)
    sys.exit(0 if worst < 1e-5 else 1)
