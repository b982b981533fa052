#!/usr/bin/env bash
# Prepares the GPU check (scripts/gpu_check.sh) on a machine WITHOUT a GPU, so that whoever is
# lent a device runs it in one call with nothing to build there (the device image has CUDA and
# PyTorch but no Rust, and reaches no registry).
#
#   scripts/gpu_prepare.sh            # .gpu/: the CUDA build of mosa (xz), the parity fixtures
#   scripts/gpu_prepare.sh --weights  # and DINOv2 ViT-S/14 in f16 (xz) for the 224-px run
#
# then, with the device tool (see docs/gpu.md):
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=570)
#
# .gpu/ is ignored by git (.git/info/exclude); the call's working tree (the repo, ~14 MiB, plus
# .gpu/, ~48 MiB with the weights) must stay under the device's 64 MiB: this script checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
fixtures=${MOSA_FIXTURES:-../shared/fixtures}
grep -qxF /.gpu/ .git/info/exclude 2>/dev/null || echo /.gpu/ >>.git/info/exclude
rm -rf .gpu

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
  python3 - "$weights" .gpu/dinov2-vits14-f16.safetensors <<'EOF'
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
  xz -T0 -6 -f .gpu/dinov2-vits14-f16.safetensors
fi

tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | awk '/total$/ {s += $1} END {print s}')
size=$(du -sb .gpu | cut -f1)
total=$(((size + tree) / 1048576))
echo ".gpu: $((size / 1048576)) MiB; with the repo's tracked files: $total MiB (the device's limit: 64)"
if [ "$total" -ge 64 ]; then
  echo "over the limit: leave out --weights (the 224-px run is then skipped there)" >&2
  exit 1
fi
