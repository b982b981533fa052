#!/usr/bin/env python3
"""What a PyTorch user does today to serve many tasks: one fine-tuned model per task, loaded on
demand into an LRU cache of models, behind the same `POST /predictions/<task>` API as `mosa serve`
(a PNG / JPEG body; the top 5 as JSON). The baseline of `cargo xtask bench-serve --compare-pytorch`.

For each mosa expert file given (`--experts`), the task's fine-tuned state dict (the base with the
expert's change applied, its head as `head.*`) is written once to `--state-dicts/<task>.safetensors`
— the per-task checkpoint such a user keeps. A request for a task whose model is not cached loads
that file into a timm VisionTransformer (`load_state_dict`), evicting the least recently used model
when the cache (`--cache-bytes`) is full. Forward passes run one at a time (batch 1; torch uses
every core inside each), as a plain threaded server does.

    python3 scripts/serve_pytorch.py --base dinov2-vits14.safetensors --experts e1.safetensors ... \
        --state-dicts /tmp/sd --cache-bytes 400000000 --port 0

Prints `listening on http://127.0.0.1:<port>` when ready. Needs torch, timm, safetensors, pillow,
numpy (a venv outside the repo; docs/serve.md).
"""
import argparse
import collections
import io
import json
import os
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch
import timm
from PIL import Image
from safetensors.numpy import load_file as np_load, save_file as np_save
from safetensors.torch import load_file as torch_load
from timm.layers import resample_abs_pos_embed

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def apply_expert(base, path):
    """The task's state dict: base + the expert's change (sparse, LoRA or dense), and its head."""
    meta = json.loads(header(path)["__metadata__"]["mosa.expert"])
    t = np_load(path)
    sd = {k: v.copy() for k, v in base.items()}
    for name, tm in meta["tensors"].items():
        w = sd[name].reshape(-1)
        enc = tm["encoding"]
        if enc in ("indices", "bitmap"):
            if enc == "bitmap":
                bits = np.unpackbits(t[name + ".bitmap"], bitorder="little")[: w.size]
                idx = np.nonzero(bits)[0]
            else:
                idx = t[name + ".indices"].astype(np.int64)
            w[idx] += t[name + ".values"].astype(np.float32)
        elif enc == "lora":
            w += (tm["scale"] * t[name + ".lora_b"] @ t[name + ".lora_a"]).reshape(-1)
        elif enc == "dense":
            w += t[name + ".delta"].reshape(-1)
        else:
            raise SystemExit(f"{path}: unknown encoding {enc}")
    sd["head.weight"] = t["head.weight"]
    if "head.bias" in t:
        sd["head.bias"] = t["head.bias"]
    return meta["task"], meta.get("classes") or [str(i) for i in range(t["head.weight"].shape[0])], sd


class Models:
    """An LRU cache of per-task models within a byte budget."""

    def __init__(self, files, classes, budget, side):
        self.files, self.classes, self.budget, self.side = files, classes, budget, side
        self.cache = collections.OrderedDict()
        self.lock = threading.Lock()
        self.bytes_per_model = None
        self.loads = 0

    def build(self, n_classes):
        return timm.create_model(
            "vit_small_patch14_dinov2", pretrained=False, img_size=self.side, num_classes=n_classes, init_values=1.0
        ).eval()

    def get(self, task):
        with self.lock:
            if task in self.cache:
                self.cache.move_to_end(task)
                return self.cache[task]
            m = self.build(len(self.classes[task]))
            m.load_state_dict(torch_load(self.files[task]), strict=True)
            self.loads += 1
            size = sum(p.numel() * p.element_size() for p in m.state_dict().values())
            self.bytes_per_model = size
            while self.cache and (len(self.cache) + 1) * size > self.budget:
                self.cache.popitem(last=False)
            self.cache[task] = m
            return m


def preprocess(body, side):
    img = Image.open(io.BytesIO(body)).convert("RGB").resize((side, side), Image.BILINEAR)
    x = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy()).unsqueeze(0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--experts", nargs="+", required=True)
    p.add_argument("--state-dicts", required=True)
    p.add_argument("--cache-bytes", type=int, required=True)
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--prepare-only", action="store_true", help="write the per-task state dicts and exit")
    a = p.parse_args()

    os.makedirs(a.state_dicts, exist_ok=True)
    base = None
    files, classes = {}, {}
    for e in a.experts:
        meta = json.loads(header(e)["__metadata__"]["mosa.expert"])
        task = meta["task"]
        out = os.path.join(a.state_dicts, f"{task}.safetensors")
        if not os.path.exists(out):
            if base is None:
                base = np_load(a.base)
                grid = a.side // 14
                pe = torch.from_numpy(base["pos_embed"])
                base["pos_embed"] = resample_abs_pos_embed(pe, new_size=[grid, grid], num_prefix_tokens=1, interpolation="bicubic", antialias=False).numpy()
            task, names, sd = apply_expert(base, e)
            np_save(sd, out + ".tmp")
            os.replace(out + ".tmp", out)
        files[task] = out
        classes[task] = meta.get("classes") or []
    if a.prepare_only:
        print(f"{len(files)} per-task state dicts in {a.state_dicts}", flush=True)
        return
    base = None
    models = Models(files, classes, a.cache_bytes, a.side)
    run_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(n)
            if not self.path.startswith("/predictions/"):
                return self.answer(404, {"error": "not found"})
            task = self.path[len("/predictions/"):]
            if task not in files:
                return self.answer(404, {"error": f"no task `{task}`"})
            try:
                x = preprocess(body, a.side)
            except Exception as e:  # noqa: BLE001 - any decoding failure is the client's
                return self.answer(400, {"error": f"the body: {e}"})
            # grad mode is per thread: each handler thread turns autograd off for itself
            with run_lock, torch.inference_mode():
                m = models.get(task)
                logits = m(x)[0]
            prob = torch.softmax(logits, 0)
            top = torch.topk(prob, min(5, prob.numel()))
            names = classes[task]
            out = [{"index": int(i), "label": names[int(i)] if names else str(int(i)), "probability": float(v)} for v, i in zip(top.values, top.indices)]
            self.answer(200, {"task": task, "top": out})

        def do_GET(self):
            if self.path == "/metrics":
                return self.answer(200, {"model_loads": models.loads, "cached": len(models.cache)})
            self.answer(200 if self.path == "/v2/health/live" else 404, {"live": True})

    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    print(f"listening on http://127.0.0.1:{srv.server_address[1]} (pytorch {torch.__version__}, cache {a.cache_bytes} bytes)", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
