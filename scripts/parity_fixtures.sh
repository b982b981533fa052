#!/usr/bin/env bash
# Runs `mosa forward` on every ViT/DINOv2 parity fixture with the given binary and writes the
# outputs to OUTDIR/<fixture>.safetensors. Compare them with the `*_io.safetensors` references
# (e.g. with scripts/compare_outputs.py). Used to check a GPU build against the same fixtures
# the CPU tests use.
#   usage: scripts/parity_fixtures.sh MOSA_BINARY FIXTURES_DIR OUTDIR
set -euo pipefail
mosa=$1; fx=$2; out=$3
mkdir -p "$out"
run() { # config weights io
  local start end
  start=$(date +%s%N)
  "$mosa" forward --model "$fx/$1" --weights "$fx/$2" --input "$fx/$3.safetensors" --out "$out/${2%.*}.$3.safetensors"
  end=$(date +%s%N)
  echo "  ${2}: $(( (end - start) / 1000000 )) ms wall (whole process, device init included)"
}
run vit.json vit.safetensors vit_io
run vit.json vit_google.npz vit_io
run vit_layerscale_resized.json vit_layerscale_resized.safetensors vit_layerscale_resized_io
run dinov2.json dinov2.onnx dinov2_io
