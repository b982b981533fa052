#!/usr/bin/env python3
"""Load a merged model written by `mosa merge` into timm and compare its logits with `mosa forward`.

The merged file holds the backbone in timm's names and layout plus each task's head under
`heads.<task>.*`; timm reads it with a strict `load_state_dict` once the chosen task's head is
renamed to `head.*`.

    mosa forward --model vit.json --weights merged.safetensors --task <task> \
        --input in.safetensors --out mosa_out.safetensors
    python3 scripts/check_merged_timm.py --merged merged.safetensors --task <task> \
        --kwargs vit.json --input in.safetensors --mosa-out mosa_out.safetensors

`--kwargs` is a JSON file with timm's VisionTransformer arguments under "kwargs" (the fixtures'
format). Needs torch, timm and safetensors (a venv outside the repo; docs/timings.md).
"""
import argparse
import json
import sys

import torch
import timm
from safetensors.torch import load_file


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--merged", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--kwargs", required=True)
    p.add_argument("--input", required=True, help="safetensors with `input` N×3×H×W")
    p.add_argument("--mosa-out", required=True, help="`mosa forward --task` output")
    p.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()

    sd = load_file(a.merged)
    head_w = sd.pop(f"heads.{a.task}.weight")
    head_b = sd.pop(f"heads.{a.task}.bias", None)
    for k in [k for k in sd if k.startswith("heads.")]:
        del sd[k]
    sd["head.weight"] = head_w
    if head_b is not None:
        sd["head.bias"] = head_b
    kwargs = dict(json.load(open(a.kwargs))["kwargs"])
    kwargs["num_classes"] = head_w.shape[0]
    model = timm.models.vision_transformer.VisionTransformer(**kwargs).eval()
    missing, unexpected = model.load_state_dict(sd, strict=True), None
    x = load_file(a.input)["input"]
    with torch.no_grad():
        logits = model(x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    ours = load_file(a.mosa_out)
    d_logits = (logits - ours["logits"]).abs().max().item()
    d_pre = (pre - ours["pre_logits"]).abs().max().item()
    print(f"timm {timm.__version__}, torch {torch.__version__}: task {a.task}, {head_w.shape[0]} classes, "
          f"max |Δ| logits {d_logits:.2e}, pre_logits {d_pre:.2e} (bound {a.tol})")
    sys.exit(0 if max(d_logits, d_pre) <= a.tol else 1)


if __name__ == "__main__":
    main()
