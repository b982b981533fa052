#!/usr/bin/env python3
"""mosa experts ⇄ HF PEFT adapters, checked both ways with PyTorch, timm and PEFT (issue #33).

On the tiny timm ViT fixture (../shared/fixtures/vit.*: img 32, patch 8, dim 48, 2 blocks):

1. **mosa → PEFT.** mosa trains a LoRA and a sparse expert (3 epochs on mini-VTAB digits8x8 at
   32 px), exports each with `mosa expert export --format peft`; PEFT loads the folder
   (`PeftModel.from_pretrained(timm.create_model(...), dir)`) and its logits on the fixture input
   are compared with `mosa merge` (the one expert) + `mosa forward --task` (max |Δ| ≤ 1e-5).
2. **PEFT → mosa.** PEFT trains a LoRA (rank / alpha patterns) and a SHiRA adapter 5 steps in
   PyTorch on the same base, an rsLoRA on the Swin fixture and a SHiRA on the ConvNeXt fixture
   (heads `head.fc`), and saves them; `mosa expert import` reads them, and mosa's logits
   (merge + forward --task) are compared with PEFT's (≤ 1e-5).
3. **Merged with our own.** The imported SHiRA with mosa's sparse expert, and the imported LoRA
   with mosa's LoRA expert, task arithmetic λ = 1: every task's logits against the same merge done
   in PyTorch from PEFT's own `get_delta_weight` (≤ 1e-5).

With `--write-fixtures DIR` it also writes the Rust tests' committed fixtures there (the PEFT
adapters trained here, PEFT's re-save of mosa's exports, mosa's two expert files, the input and
every reference logit). Prints a Markdown table; exit 1 if any check fails.

    /work/torch-venv/bin/python scripts/check_peft.py --mosa target/release/mosa [--write-fixtures DIR]

Needs torch, timm, peft, safetensors, numpy (a venv outside the repo; docs/peft.md).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import peft
import timm
import torch
from peft import LoraConfig, PeftModel, ShiraConfig, get_peft_model
from safetensors.torch import load_file, save_file

TOL = 1e-5
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return r.stdout


FAMILIES = {
    "vit": timm.models.vision_transformer.VisionTransformer,
    "swin": timm.models.swin_transformer.SwinTransformer,
    "convnext": timm.models.convnext.ConvNeXt,
}


class Base:
    """A tiny timm fixture model (its constructor arguments, weights and input)."""

    def __init__(self, fixtures, name="vit"):
        self.name = name
        self.json = os.path.join(fixtures, f"{name}.json")
        self.weights = os.path.join(fixtures, f"{name}.safetensors")
        self.kwargs = json.load(open(self.json))["kwargs"]
        self.sd = load_file(self.weights)
        self.input = load_file(os.path.join(fixtures, f"{name}_io.safetensors"))["input"]
        self.head = "head" if name == "vit" else "head.fc"

    def model(self, classes):
        m = FAMILIES[self.name](**dict(self.kwargs, num_classes=classes))
        own = classes == self.kwargs["num_classes"]
        sd = {k: v for k, v in self.sd.items() if own or not k.startswith(self.head + ".")}
        missing, unexpected = m.load_state_dict(sd, strict=False)
        assert not unexpected and all(k.startswith(self.head + ".") for k in missing), (missing, unexpected)
        return m.eval()


def mosa_logits(mosa, base, expert, task, work):
    os.makedirs(work, exist_ok=True)
    merged = os.path.join(work, f"merged-{task}.safetensors")
    run([mosa, "merge", expert, "--method", "task-arithmetic", "--lambda", "1", "--base", base.weights, "--out", merged])
    return forward(mosa, base, merged, task, work)


def forward(mosa, base, merged, task, work):
    os.makedirs(work, exist_ok=True)
    inp = os.path.join(work, f"input-{base.name}.safetensors")
    if not os.path.exists(inp):
        save_file({"input": base.input.contiguous()}, inp)
    out = os.path.join(work, f"out-{task}.safetensors")
    run([mosa, "forward", "--model", base.json, "--weights", merged, "--task", task, "--input", inp, "--out", out])
    return load_file(out)["logits"]


def peft_model(base, classes, adapter):
    return PeftModel.from_pretrained(base.model(classes), adapter).eval()


def train_peft(base, config, steps, seed):
    torch.manual_seed(seed)
    m = get_peft_model(base.model(5), config)
    side = base.input.shape[-1]
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(16, 3, side, side)
    y = torch.randint(0, 5, (16,))
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def delta_weights(pm):
    """ΔW per base weight name, from PEFT's own layers."""
    out = {}
    for name, mod in pm.base_model.model.named_modules():
        if hasattr(mod, "get_delta_weight") and hasattr(mod, "base_layer"):
            d = mod.get_delta_weight("default")
            out[f"{name}.weight"] = (d.to_dense() if d.is_sparse else d).detach()
    return out


def head_of(pm):
    m = pm.base_model.model.head
    if hasattr(m, "modules_to_save"):
        m = m.modules_to_save["default"]
    return m.weight.detach(), m.bias.detach()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mosa", default=os.path.join(ROOT, "target/release/mosa"))
    ap.add_argument("--fixtures", default=os.environ.get("MOSA_FIXTURES", os.path.join(ROOT, "../shared/fixtures")))
    ap.add_argument("--work", help="working folder [default: a temporary one]")
    ap.add_argument("--write-fixtures", help="write the Rust tests' fixtures into this folder")
    a = ap.parse_args()
    mosa = os.path.abspath(a.mosa)
    work = a.work or tempfile.mkdtemp(prefix="check-peft-")
    os.makedirs(work, exist_ok=True)
    base = Base(a.fixtures)
    data = os.path.join(ROOT, "datasets/mini-vtab/digits8x8")
    rows, ok = [], True

    def check(what, ref, got, note=""):
        nonlocal ok
        d = (ref - got).abs().max().item()
        passed = d <= TOL and ref.abs().max().item() > 0
        ok &= passed
        rows.append((what, tuple(ref.shape), f"{d:.2e}", "pass" if passed else "FAIL", note))

    # 1. mosa → PEFT
    experts, peft_logits, resaved = {}, {}, {}
    for method in ["lora", "sparse"]:
        rd = os.path.join(work, f"run-{method}")
        shutil.rmtree(rd, ignore_errors=True)
        run([mosa, "train", "--method", method, "--model", base.json, "--weights", base.weights, "--dataset", f"vtab:{data}",
             "--epochs", "3", "--warmup-epochs", "0", "--batch-size", "32", "--lr", "0.02", "--resolution", "32", "--out", rd])
        e = os.path.join(rd, "expert.safetensors")
        experts[method] = e
        pdir = os.path.join(work, f"peft-{method}")
        msg = run([mosa, "expert", "export", "--run", rd, "--format", "peft", "--out", pdir]).strip()
        pm = peft_model(base, 10, pdir)
        with torch.no_grad():
            ref = pm(base.input)
        peft_logits[method] = ref
        ours = mosa_logits(mosa, base, e, "digits8x8", os.path.join(work, f"m-{method}"))
        cfg = json.load(open(os.path.join(pdir, "adapter_config.json")))
        check(f"mosa {method} expert → PEFT {cfg['peft_type']} (PeftModel.from_pretrained)", ref, ours, msg.split("(", 1)[1].split(":")[0])
        resaved[method] = os.path.join(work, f"peft-{method}-resaved")
        shutil.rmtree(resaved[method], ignore_errors=True)
        pm.save_pretrained(resaved[method])

    # 2. PEFT → mosa: on the ViT, and on the Swin and ConvNeXt fixtures (head `head.fc`)
    swin, convnext = Base(a.fixtures, "swin"), Base(a.fixtures, "convnext")
    trained = {
        "lora": (base, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "attn.proj", "fc1", "fc2"], modules_to_save=["head"],
                                  rank_pattern={"fc2": 2}, alpha_pattern={"blocks.1.attn.proj": 3})),
        "shira": (base, ShiraConfig(r=2, target_modules=["qkv", "attn.proj", "fc1", "fc2"], modules_to_save=["head"], random_seed=7)),
        "swin_lora": (swin, LoraConfig(r=2, lora_alpha=4, use_rslora=True, target_modules=["qkv", "fc1", "fc2"], modules_to_save=["head.fc"])),
        "convnext_shira": (convnext, ShiraConfig(r=1, target_modules=["fc1", "fc2"], modules_to_save=["head.fc"], random_seed=5)),
    }
    imported, torch_logits, pms = {}, {}, {}
    for name, (fam, cfg) in trained.items():
        pm = train_peft(fam, cfg, steps=5, seed=11)
        tdir = os.path.join(work, f"torch-{name}")
        shutil.rmtree(tdir, ignore_errors=True)
        pm.save_pretrained(tdir)
        pms[name] = pm
        with torch.no_grad():
            torch_logits[name] = pm(fam.input)
        out = os.path.join(work, f"imported-{name}.safetensors")
        msg = run([mosa, "expert", "import", tdir, "--base", fam.weights, "--model", fam.json, "--task", f"torch-{name}", "--out", out]).strip()
        imported[name] = out
        ours = mosa_logits(mosa, fam, out, f"torch-{name}", os.path.join(work, f"i-{name}"))
        check(f"PEFT {cfg.peft_type.value} on the {fam.name} (PyTorch, 5 steps) → mosa expert import", torch_logits[name], ours, msg.split("(", 1)[1].rsplit(",", 1)[0])
        # and out again: the imported expert converted back to PEFT loads in PEFT to the same logits
        # (LoRA: our rank_pattern / alpha_pattern for modules of another rank or scale)
        back = os.path.join(work, f"back-{name}")
        run([mosa, "expert", "convert", out, "--to", "peft", "--out", back])
        with torch.no_grad():
            again = PeftModel.from_pretrained(fam.model(5), back).eval()(fam.input)
        bcfg = json.load(open(os.path.join(back, "adapter_config.json")))
        patterns = ", ".join(f"{k} {bcfg[k]}" for k in ["rank_pattern", "alpha_pattern"] if bcfg.get(k))
        check(f"… imported, converted back to PEFT, loaded by PEFT ({fam.name})", torch_logits[name], again, patterns or f"r {bcfg['r']}")

    # 3. merged with our own experts: task arithmetic, λ = 1, against the same merge in PyTorch
    for mine, theirs in [("sparse", "shira"), ("lora", "lora")]:
        merged = os.path.join(work, f"merged-{mine}+{theirs}.safetensors")
        msg = run([mosa, "merge", experts[mine], imported[theirs], "--method", "task-arithmetic", "--lambda", "1", "--base", base.weights, "--out", merged]).strip()
        ours_pm = peft_model(base, 10, os.path.join(work, f"peft-{mine}"))
        deltas = [delta_weights(ours_pm), delta_weights(pms[theirs])]
        sd = {k: v.clone() for k, v in base.sd.items()}
        for d in deltas:
            for k, v in d.items():
                sd[k] += v
        for task, pm, n in [("digits8x8", ours_pm, 10), (f"torch-{theirs}", pms[theirs], 5)]:
            m = base.model(n)
            w, b = head_of(pm)
            m.load_state_dict(dict({k: v for k, v in sd.items() if not k.startswith("head.")}, **{"head.weight": w, "head.bias": b}))
            with torch.no_grad():
                ref = m.eval()(base.input)
            ours = forward(mosa, base, merged, task, os.path.join(work, f"mm-{mine}-{task}"))
            check(f"merge of mosa {mine} + imported {theirs.upper()}: task {task}", ref, ours, "task arithmetic λ 1 vs PyTorch W0 + ΔW₁ + ΔW₂")

    print(f"torch {torch.__version__}, timm {timm.__version__}, peft {peft.__version__}; bases: the tiny timm ViT, Swin and ConvNeXt fixtures; inputs of 2 images\n")
    print("| check | logits | max abs diff | result | what |")
    print("|---|---|---:|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |")

    if a.write_fixtures:
        fx = a.write_fixtures
        os.makedirs(fx, exist_ok=True)
        for name in trained:
            dst = os.path.join(fx, f"torch_{name}")
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(os.path.join(work, f"torch-{name}"), dst, ignore=shutil.ignore_patterns("README.md"))
        for method in ["lora", "sparse"]:
            shutil.copy(experts[method], os.path.join(fx, f"mosa_{method}.safetensors"))
            dst = os.path.join(fx, f"mosa_{method}_peft")
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(resaved[method], dst, ignore=shutil.ignore_patterns("README.md"))
        io = {"input": base.input.contiguous(), "input_swin": swin.input.contiguous(), "input_convnext": convnext.input.contiguous()}
        io.update({f"torch_{k}": v.contiguous() for k, v in torch_logits.items()})
        io.update({f"mosa_{k}": v.contiguous() for k, v in peft_logits.items()})
        save_file(io, os.path.join(fx, "logits.safetensors"), metadata={"torch": torch.__version__, "timm": timm.__version__, "peft": peft.__version__})
        print(f"\nfixtures written to {fx}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
