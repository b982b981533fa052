"""The workloads of `cargo xtask bench-speed` in PyTorch, for a side-by-side run on the same
machine (`cargo xtask bench-speed --compare-pytorch <python>` interleaves the two).

ViT-S/16 (timm `vit_small_patch16_224`, random weights, 100 classes), 224 px, or with `--model` Swin
(`swin_tiny_patch4_window7_224`) or ConvNeXt (`convnext_tiny`), each with mosa's placement for that family:
- `forward`: inference at batch 32 (`eval()`, `inference_mode`);
- `step <method>`: one training step at batch 8 — forward, cross-entropy, backward, AdamW
  (eps 1e-6, weight decay 0.01) — with the same method definitions as mosa's defaults:
  - `linear`: the head trains;
  - `adapter`: AdaptFormer parallel to each MLP, `h + MLP(LN2 h) + 0.1·Up(Dropout0.1(ReLU(Down(LN h))))`,
    r 16 (mosa's `adapter` default, the MoSA code base's `vit_adapter.py`); on Swin and ConvNeXt the
    adapter reads the MLP's own (normalised) input and has no LayerNorm of its own:
    `h + MLP(n) + 0.1·A(n)` (Swin, n = LN2 h), `x + γ·MLP(n) + 0.1·A(n)` (ConvNeXt, n = LN(dwconv x));
  - `lora`: r 16, alpha 16 on the q and v parts of each fused qkv (mosa's `lora` default; ViT and
    Swin), on `mlp.fc1` and `mlp.fc2` for ConvNeXt (mosa's ConvNeXt targets);
  - `full`: everything trains;
  - `mosa`: the adapter with Up split into 4 stacked experts (shared Down), two passes with an
    expert drawn per block and pass, CE + symmetric KL with stop-gradient, expert-masked Up
    gradients (mosa's `mosa` default).
Prints one JSON line: {"workload", "times": [...], "median_s", "images_per_second"}.

On a GPU (`--device cuda`) every timed iteration ends with `torch.cuda.synchronize()`; `--tf32` lets
fp32 matmuls and convolutions use TF32 tensor cores (`torch.set_float32_matmul_precision("high")`;
off by default, PyTorch's own default for matmuls), and `--compile` wraps the model in
`torch.compile` (its compilation happens in the warm-up iterations, which are not timed).

Install: python -m venv ~/.venvs/torch && ~/.venvs/torch/bin/pip install torch timm
"""
import argparse
import json
import statistics
import time

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F


class Adapter(nn.Module):
    def __init__(self, d, r=16, experts=1, norm=True):
        super().__init__()
        self.norm = nn.LayerNorm(d, eps=1e-6) if norm else nn.Identity()
        self.down = nn.Linear(d, r)
        self.up_w = nn.Parameter(torch.zeros(experts, r, d))
        self.up_b = nn.Parameter(torch.zeros(experts, d))
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.down.bias)
        self.act = nn.ReLU() if experts == 1 else nn.GELU()
        self.expert = 0
        # MoSA: expert e owns a random quarter of Up's entries
        owner = torch.randint(0, experts, (experts, r, d))[0]
        self.register_buffer("masks", torch.stack([(owner == e).float() for e in range(experts)]))

    def forward(self, x):
        h = F.dropout(self.act(self.down(self.norm(x))), 0.1, self.training)
        return 0.1 * (h @ self.up_w[self.expert] + self.up_b[self.expert])


class AdaptedBlock(nn.Module):
    def __init__(self, block, adapter):
        super().__init__()
        self.block, self.adapter = block, adapter

    def forward(self, x):
        b = self.block
        h = x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
        return h + b.drop_path2(b.ls2(b.mlp(b.norm2(h)))) + self.adapter(h)


class AdaptedSwinBlock(nn.Module):
    """timm's SwinTransformerBlock with the adapter beside the MLP, on the MLP's input."""

    def __init__(self, block, adapter):
        super().__init__()
        self.block, self.adapter = block, adapter

    def forward(self, x):
        b = self.block
        h = x + b.drop_path1(b._attn(b.norm1(x)))
        n = b.norm2(h)
        return h + b.drop_path2(b.mlp(n)) + self.adapter(n)


class AdaptedConvNeXtBlock(nn.Module):
    """timm's ConvNeXtBlock (channels-last MLP) with the adapter beside the MLP, on its input."""

    def __init__(self, block, adapter):
        super().__init__()
        self.block, self.adapter = block, adapter

    def forward(self, x):
        b = self.block
        n = b.norm(b.conv_dw(x).permute(0, 2, 3, 1))
        m = b.mlp(n)
        if b.gamma is not None:
            m = m * b.gamma
        m = m + self.adapter(n)
        return b.drop_path(m.permute(0, 3, 1, 2)) + b.shortcut(x)


class Lora(nn.Module):
    """LoRA on a whole linear."""

    def __init__(self, base, r=16, alpha=16):
        super().__init__()
        self.base = base
        self.a = nn.Parameter(torch.empty(base.in_features, r))
        self.b = nn.Parameter(torch.zeros(r, base.out_features))
        nn.init.uniform_(self.a, -(base.in_features ** -0.5), base.in_features ** -0.5)
        self.scale = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.a @ self.b) * self.scale


class LoraQV(nn.Module):
    """LoRA on the q and v thirds of a fused qkv linear."""

    def __init__(self, qkv, r=16, alpha=16):
        super().__init__()
        self.qkv, d = qkv, qkv.in_features
        self.a = nn.ParameterList([nn.Parameter(torch.empty(d, r)) for _ in range(2)])
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(r, d)) for _ in range(2)])
        for a in self.a:
            nn.init.uniform_(a, -(d ** -0.5), d ** -0.5)
        self.scale, self.d = alpha / r, d

    def forward(self, x):
        y = self.qkv(x)
        q = (x @ self.a[0] @ self.b[0]) * self.scale
        v = (x @ self.a[1] @ self.b[1]) * self.scale
        return y + torch.cat([q, torch.zeros_like(q), v], dim=-1)


def family(model):
    if hasattr(model, "stages"):
        return "convnext"
    if hasattr(model, "layers"):
        return "swin"
    return "vit"


def blocks(model):
    """(container, index, block) of every block, whatever the family."""
    fam = family(model)
    if fam == "vit":
        return [(model.blocks, i, b) for i, b in enumerate(model.blocks)]
    stages = model.stages if fam == "convnext" else model.layers
    return [(s.blocks, i, b) for s in stages for i, b in enumerate(s.blocks)]


def build(method, name="vit_small_patch16_224"):
    model = timm.create_model(name, pretrained=False, num_classes=100)
    fam = family(model)
    adapters = []
    if method in ("linear", "adapter", "lora", "mosa"):
        for p in model.parameters():
            p.requires_grad = False
        for p in model.get_classifier().parameters():
            p.requires_grad = True
    if method in ("adapter", "mosa"):
        for container, i, blk in blocks(model):
            d = blk.mlp.fc1.in_features
            a = Adapter(d, experts=4 if method == "mosa" else 1, norm=fam == "vit")
            adapters.append(a)
            container[i] = {"vit": AdaptedBlock, "swin": AdaptedSwinBlock, "convnext": AdaptedConvNeXtBlock}[fam](blk, a)
    if method == "lora":
        for _, _, blk in blocks(model):
            if fam == "convnext":
                blk.mlp.fc1, blk.mlp.fc2 = Lora(blk.mlp.fc1), Lora(blk.mlp.fc2)
            else:
                blk.attn.qkv = LoraQV(blk.attn.qkv)
    return model, adapters


def step_fn(method, model, adapters, opt, x, y):
    def forward(draw):
        if draw:
            for a in adapters:
                a.expert = int(torch.randint(0, 4, ()))
        return model(x)

    opt.zero_grad(set_to_none=True)
    if method == "mosa":
        z1, z2 = forward(True), forward(True)
        kl = lambda i, t: F.kl_div(F.log_softmax(i, -1), F.log_softmax(t.detach(), -1), reduction="batchmean", log_target=True)
        loss = F.cross_entropy(z1, y) + 0.5 * (kl(z1, z2) + kl(z2, z1))
    else:
        loss = F.cross_entropy(forward(False), y)
    loss.backward()
    for a in adapters:
        if a.up_w.grad is not None and a.up_w.shape[0] > 1:
            a.up_w.grad.mul_(a.masks)
    opt.step()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["forward", "step"])
    p.add_argument("method", nargs="?", default="adapter")
    p.add_argument("--batch", type=int)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--model", default="vit_small_patch16_224", help="a timm ViT, Swin or ConvNeXt (e.g. swin_tiny_patch4_window7_224, convnext_tiny)")
    p.add_argument("--resolution", type=int, default=224, help="forward: input side")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tf32", action="store_true", help="fp32 matmuls on TF32 tensor cores")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if a.tf32:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = False

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
    torch.manual_seed(3407)
    times = []
    if a.workload == "forward":
        batch = a.batch or 32
        model, _ = build("linear", a.model)
        model = model.to(dev).eval()
        run = torch.compile(model) if a.compile else model
        x = torch.randn(batch, 3, a.resolution, a.resolution, device=dev)
        with torch.inference_mode():
            for i in range(a.warmup + a.iters):
                sync()
                t0 = time.perf_counter()
                run(x)
                sync()
                if i >= a.warmup:
                    times.append(time.perf_counter() - t0)
        name = "inference"
    else:
        batch = a.batch or 8
        model, adapters = build(a.method, a.model)
        model = model.to(dev).train()
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3, eps=1e-6, weight_decay=0.01)
        x, y = torch.randn(batch, 3, a.resolution, a.resolution, device=dev), torch.arange(batch, device=dev) % 100
        run = torch.compile(model) if a.compile else model
        for i in range(a.warmup + a.iters):
            sync()
            t0 = time.perf_counter()
            step_fn(a.method, run, adapters, opt, x, y)
            sync()
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
        name = f"train step, {a.method}"
    med = statistics.median(times)
    print(json.dumps({"workload": name, "model": a.model, "batch": batch, "times": times, "median_s": med, "images_per_second": batch / med, "torch": torch.__version__, "threads": torch.get_num_threads(), "device": a.device, "tf32": a.tf32, "compile": a.compile}))


if __name__ == "__main__":
    main()
