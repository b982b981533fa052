#!/usr/bin/env python3
"""Compare mosa's converted DINOv2 ViT-S/14 with the original ONNX graph run by onnxruntime.

Not part of the product or the tests (it needs onnxruntime, numpy, pillow and safetensors, which
mosa never does). Usage:

    python3 scripts/check_dinov2_onnx.py --onnx vit_s_focus.onnx --mosa target/release/mosa \
        --image chelsea.png [--size 224]

It resizes the image (bilinear, no aspect), normalises with ImageNet mean/std, runs
`mosa forward --model dinov2-vits14` on it and the ONNX graph with its backbone's final LayerNorm
exposed as an extra output, and prints the max |difference| and the cosine similarity of the
class tokens and of all tokens.
"""
import argparse, subprocess, tempfile, os
import numpy as np
import onnx, onnxruntime as ort
from PIL import Image
from safetensors.numpy import save_file, load_file

ap = argparse.ArgumentParser()
ap.add_argument("--onnx", required=True)
ap.add_argument("--mosa", required=True)
ap.add_argument("--image", required=True, nargs="+")
ap.add_argument("--size", type=int, default=224)
args = ap.parse_args()

imgs = []
for p in args.image:
    im = Image.open(p).convert("RGB").resize((args.size, args.size), Image.BILINEAR)
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    imgs.append(x.transpose(2, 0, 1))
x = np.stack(imgs).astype(np.float32)
print("input C-contiguous:", x.flags["C_CONTIGUOUS"])

model = onnx.load(args.onnx)
out_name = "/backbone/layernorm/Add_1_output_0"
model.graph.output.append(onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None))
sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
ref = sess.run([out_name], {sess.get_inputs()[0].name: x})[0]

with tempfile.TemporaryDirectory() as d:
    # safetensors writes the raw buffer: make it C-contiguous first
    save_file({"input": np.ascontiguousarray(x)}, os.path.join(d, "in.safetensors"))
    subprocess.run([args.mosa, "forward", "--model", "dinov2-vits14", "--input", os.path.join(d, "in.safetensors"),
                    "--out", os.path.join(d, "out.safetensors")], check=True)
    got = load_file(os.path.join(d, "out.safetensors"))["tokens"]

def cos(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

print(f"input {x.shape}, tokens {got.shape} vs onnxruntime {ref.shape}")
print(f"max |diff| all tokens: {np.abs(got - ref).max():.3e} (token scale: mean |x| {np.abs(ref).mean():.3f})")
print(f"max |diff| class token: {np.abs(got[:, 0] - ref[:, 0]).max():.3e}")
print("cosine class token per image:", np.round(cos(got[:, 0], ref[:, 0]), 7))
print("cosine all tokens per image:", np.round(cos(got, ref), 7))
