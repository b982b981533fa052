#!/usr/bin/env bash
# Prepares the GPU check (scripts/gpu_check.sh) on a machine WITHOUT a GPU, so that whoever is
# lent a device runs it in one call with nothing to build there (the device image has CUDA and
# PyTorch but no Rust, and reaches no registry).
#
#   scripts/gpu_prepare.sh            # .gpu/: the CUDA build of mosa (xz), the parity fixtures
#   scripts/gpu_prepare.sh --weights  # also .gpu-train/: DINOv2 ViT-S/14 in f16 for the 224-px run
#
# then, with the device tool (see docs/gpu.md):
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=540)
#   run(command="bash scripts/gpu_check.sh train", carry=[".gpu-train"], timeout_s=300)   # at once, while warm
#
# Both folders are ignored by git (.git/info/exclude), and each call's working tree (the repo,
# ~14 MiB, plus what it carries) must stay under the device's 64 MiB: this script prints the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
fixtures=${MOSA_FIXTURES:-../shared/fixtures}
for ignore in /.gpu/ /.gpu-train/; do
  grep -qxF "$ignore" .git/info/exclude 2>/dev/null || echo "$ignore" >>.git/info/exclude
done

echo "building mosa with the cuda backend (cudarc loads libcuda at run time: no CUDA needed here)"
cargo build --release --locked -p mosa-cli --no-default-features --features cuda
mkdir -p .gpu/fixtures
strip -o .gpu/mosa "$target/release/mosa"
xz -T0 -6 -f .gpu/mosa
for f in vit.json vit.safetensors vit_google.npz vit_io.safetensors vit_layerscale_resized.json \
  vit_layerscale_resized.safetensors vit_layerscale_resized_io.safetensors dinov2.json dinov2.onnx dinov2_io.safetensors; do
  cp "$fixtures/$f" .gpu/fixtures/
done
git rev-parse HEAD >.gpu/commit

if [ "${1:-}" = "--weights" ]; then
  weights=${MOSA_WEIGHTS:-$HOME/.cache/mosa/weights/dinov2-vits14.safetensors}
  mkdir -p .gpu-train
  python3 - "$weights" .gpu-train/dinov2-vits14-f16.safetensors <<'EOF'
import json, struct, sys
from array import array
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    body = f.read()
meta = header.pop("__metadata__", None)
out_header, chunks, off = {}, [], 0
for name, t in header.items():
    a, b = t["data_offsets"]
    assert t["dtype"] == "F32", (name, t["dtype"])
    v = array("f")
    v.frombytes(body[a:b])
    x = struct.pack(f"<{len(v)}e", *v)
    out_header[name] = {"dtype": "F16", "shape": t["shape"], "data_offsets": [off, off + len(x)]}
    chunks.append(x)
    off += len(x)
if meta:
    out_header["__metadata__"] = meta
h = json.dumps(out_header).encode()
h += b" " * (-len(h) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))
EOF
  cp .gpu/commit .gpu-train/commit
fi

tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | awk '/total$/ {s += $1} END {print s}')
for d in .gpu .gpu-train; do
  [ -d "$d" ] || continue
  size=$(du -sb "$d" | cut -f1)
  echo "$d: $((size / 1048576)) MiB; with the repo's tracked files: $(((size + tree) / 1048576)) MiB (limit 64)"
done
