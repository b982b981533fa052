#!/usr/bin/env bash
# CI: runs the workspace's cargo examples (examples/*.rs, in the `mosa` crate) end to end on the
# committed image folders (examples/data): LoRA and MoSA fine-tuning, two sparse experts merged
# with TIES, and a PEFT LoRA adapter trained in PyTorch (the committed fixture of
# crates/mosa-cli/tests/data/peft, on the tiny timm ViT of the reference fixtures) evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
fixtures="${MOSA_FIXTURES:-../shared/fixtures}"
run() { cargo run --quiet --locked -p mosa --example "$@"; }
run finetune examples/data/shapes lora
run finetune examples/data/shapes mosa
run merge_experts
run peft_eval crates/mosa-cli/tests/data/peft/torch_lora "$fixtures/vit.safetensors" "$fixtures/vit.json" examples/data/shapes 32
echo "examples: all ran"
