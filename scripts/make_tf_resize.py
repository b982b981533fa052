"""Reference values for mosa's VTAB resize: TensorFlow's `tf.image.resize` (bilinear, the call in
the MoSA / VPT code base's `preprocess_fn`), then `/ 255` and the ImageNet normalisation.

Writes crates/mosa-data/tests/data/tf_resize.safetensors: per case `k`, `src.k` (H×W×3 uint8,
random), `resized.k` (S×S×3 float32, TensorFlow's output) and `model_input.k` (3×S×S float32, what
the model receives). Run with any TensorFlow 2 (checked with 2.21, CPU):
    python -m venv ~/.venvs/tf && ~/.venvs/tf/bin/pip install tensorflow-cpu safetensors
    ~/.venvs/tf/bin/python scripts/make_tf_resize.py
"""
import numpy as np
import tensorflow as tf
from safetensors.numpy import save_file

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# (height, width, S): shrinking by non-integer and integer factors, non-square, enlarging, identity
CASES = [(23, 37, 16), (60, 80, 24), (64, 64, 32), (7, 10, 16), (32, 32, 40), (16, 16, 16), (50, 13, 9)]

rng = np.random.default_rng(0)
out = {}
for k, (h, w, s) in enumerate(CASES):
    src = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    resized = tf.image.resize(src, [s, s]).numpy().astype(np.float32)
    model_input = ((resized / 255.0 - MEAN) / STD).transpose(2, 0, 1).copy()
    out[f"src.{k}"] = src
    out[f"resized.{k}"] = resized
    out[f"model_input.{k}"] = model_input
save_file(out, "crates/mosa-data/tests/data/tf_resize.safetensors", metadata={"tensorflow": tf.__version__, "call": "tf.image.resize(src, [S, S])"})
print("wrote", len(CASES), "cases with TensorFlow", tf.__version__)
