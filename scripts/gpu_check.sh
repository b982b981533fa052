#!/usr/bin/env bash
# The GPU check of issue #34, for whoever is lent a device (one H100, ≤ 8 minutes). Prepared
# beforehand, without a GPU, by `scripts/gpu_prepare.sh --weights` (docs/gpu.md), then one call:
#
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=570)
#
# (`bash scripts/gpu_check.sh bench` runs phases 1–3 only, `… train` phase 4 only.)
#     1. parity: the CUDA build's `mosa forward` on the ViT / DINOv2 fixtures against timm's
#        outputs (bound 1e-2 absolute: TF32 tensor-core matmuls keep 10 mantissa bits, ~5e-4
#        relative per product; the CPU build is held to 1e-4);
#     2. speed: `mosa bench forward | step` (adapter, LoRA, MoSA) on ViT-B/16 at 224, batch 128,
#        beside scripts/bench_pytorch.py on the same GPU: eager fp32, eager TF32, and
#        torch.compile + TF32 (inference and adapter; MoSA's per-pass expert switch recompiles);
#     3. memory: 20 epochs of `mosa train` (adapter, random-init ViT-S/16 at 56 px, one
#        mini-VTAB task) with nvidia-smi sampling the memory used (burn #4792: a loader's
#        threads that touch the GPU leak per epoch; ours build batches on the host).
#     4. accuracy (when .gpu holds the weights): DINOv2 ViT-S/14 (f16 weights), adapter,
#        emoji_category at 224 px, 3 epochs, against the CPU run of the same command
#        (docs/results/gpu/cpu_reference.json).
#
# Everything lands in $OUT (gpu_check.md: the tables; logs), which the tool brings back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
phase=${1:-all}
G=.gpu
report=$OUT/gpu_check.md
say() { echo "[$(date +%T)] $*" >&2; }
py=$(command -v python3)

if [ ! -x $G/mosa ]; then
  [ -f $G/mosa.xz ] || { echo "no .gpu/mosa.xz: run scripts/gpu_prepare.sh here first and carry .gpu" >&2; exit 2; }
  xz -dc $G/mosa.xz >$G/mosa && chmod +x $G/mosa
fi
mosa=$PWD/$G/mosa
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-balanced}
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi")
{
  echo "# GPU check ($phase), $(date -u +%FT%TZ)"
  echo
  echo "GPU: $gpu; commit $(cat $G/commit 2>/dev/null || echo '?'); torch $($py -c 'import torch; print(torch.__version__)' 2>/dev/null); timm $($py -c 'import timm; print(timm.__version__)' 2>/dev/null)"
  echo
} >>"$report"
"$mosa" info >"$OUT/info.txt" 2>&1 || true

if [ "$phase" = "bench" ] || [ "$phase" = "all" ]; then
  say "1. parity on the fixtures"
  if scripts/parity_fixtures.sh "$mosa" $G/fixtures "$OUT/parity" >"$OUT/parity.log" 2>&1; then
    $py scripts/compare_outputs.py "$OUT/parity" $G/fixtures --bound 1e-2 >>"$OUT/parity.log" 2>&1
    rc=$?
  else
    rc=1
  fi
  { echo "## 1. Parity (CUDA build vs timm's fixture outputs, bound 1e-2 for TF32)"; echo; echo '```'; cat "$OUT/parity.log"; echo '```'; echo "exit $rc"; echo; } >>"$report"

  say "2. speed, ViT-B/16 224 b128"
  rows=$OUT/speed.jsonl
  : >"$rows"
  ours() { # label, mosa args…
    local label=$1; shift
    local line
    line=$("$mosa" "$@" --json 2>>"$OUT/speed.log" | tail -1)
    echo "{\"side\": \"mosa\", \"label\": \"$label\", \"m\": ${line:-null}}" >>"$rows"
  }
  theirs() { # label, variant, timeout, bench_pytorch args…
    local label=$1 variant=$2 limit=$3; shift 3
    local line
    line=$(timeout "$limit" $py scripts/bench_pytorch.py "$@" --device cuda 2>>"$OUT/speed.log" | tail -1)
    echo "{\"side\": \"$variant\", \"label\": \"$label\", \"m\": ${line:-null}}" >>"$rows"
  }
  ours inference bench forward --model vit-b16 --batch 128 --warmup 3 --iters 10
  theirs inference "PyTorch eager fp32" 120 forward --model vit_base_patch16_224 --batch 128 --warmup 3 --iters 10
  theirs inference "PyTorch eager TF32" 120 forward --model vit_base_patch16_224 --batch 128 --warmup 3 --iters 10 --tf32
  theirs inference "torch.compile TF32" 150 forward --model vit_base_patch16_224 --batch 128 --warmup 3 --iters 10 --tf32 --compile
  for m in adapter lora mosa; do
    ours "$m" bench step --model vit-b16 --batch 128 --method $m --warmup 2 --iters 5
    theirs "$m" "PyTorch eager fp32" 120 step $m --model vit_base_patch16_224 --batch 128 --warmup 2 --iters 5
    theirs "$m" "PyTorch eager TF32" 120 step $m --model vit_base_patch16_224 --batch 128 --warmup 2 --iters 5 --tf32
  done
  # MoSA's two passes as two forwards (ours stacks them into one over 2B images by default)
  ours "mosa, two forwards" bench step --model vit-b16 --batch 128 --method mosa --passes separate --warmup 2 --iters 5
  theirs "mosa, two forwards" "PyTorch eager fp32" 120 step mosa --model vit_base_patch16_224 --batch 128 --warmup 2 --iters 5
  theirs "mosa, two forwards" "PyTorch eager TF32" 120 step mosa --model vit_base_patch16_224 --batch 128 --warmup 2 --iters 5 --tf32
  theirs adapter "torch.compile TF32" 150 step adapter --model vit_base_patch16_224 --batch 128 --warmup 3 --iters 5 --tf32 --compile
  $py - "$rows" >>"$report" <<'EOF'
import json, sys
rows = []
for l in open(sys.argv[1]):
    try:
        rows.append(json.loads(l))
    except ValueError:
        pass  # a command that failed printed no JSON: its cell stays empty (see speed.log)
labels = ["inference", "adapter", "lora", "mosa", "mosa, two forwards"]
sides = ["mosa", "PyTorch eager fp32", "PyTorch eager TF32", "torch.compile TF32"]
t = {(r["label"], r["side"]): r["m"]["median_s"] for r in rows if r["m"]}
print("## 2. Speed, ViT-B/16, 224 px, batch 128 (median s per iteration; images/s; mosa's speed relative to each)\n")
print("| measure | " + " | ".join(sides) + " | mosa / eager fp32 | mosa / eager TF32 | mosa / compile TF32 |")
print("|---|" + "---:|" * (len(sides) + 3))
for l in labels:
    cells = [f"{t[(l, s)]:.4f} s ({128 / t[(l, s)]:.0f}/s)" if (l, s) in t else "—" for s in sides]
    m = t.get((l, "mosa"))
    ratio = [f"{t[(l, s)] / m:.2f}×" if m and (l, s) in t else "—" for s in sides[1:]]
    print(f"| {l} | " + " | ".join(cells) + " | " + " | ".join(ratio) + " |")
print("\nMoSA's goal: ≥ 1.2× PyTorch eager images/s. Its step is two stochastic passes on both sides: ours\n"
      "as one forward over the stacked batch (row `mosa`) and as two forwards (`--passes separate`),\n"
      "PyTorch's as two forwards in both rows.\n")
EOF

  say "3. memory over 20 epochs"
  task=datasets/mini-vtab/emoji_category
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 500 >"$OUT/memory.csv" 2>/dev/null &
  smi=$!
  "$mosa" train --method adapter --model vit-s16 --weights none --dataset "vtab:$task" --resolution 56 --epochs 20 --warmup-epochs 2 \
    --batch-size 64 --eval-every 5 --out "$OUT/mem-run" >"$OUT/memory-train.log" 2>&1
  rc=$?
  kill $smi 2>/dev/null
  $py - "$OUT/memory.csv" "$rc" >>"$report" <<'EOF'
import sys
mib = [float(l.split(",")[1]) for l in open(sys.argv[1]) if "," in l]
print("## 3. GPU memory over 20 epochs (adapter, ViT-S/16 random init, 56 px, emoji_category)\n")
if len(mib) < 8:
    print(f"too few samples ({len(mib)}); train exit {sys.argv[2]}\n")
else:
    q = len(mib) // 4
    a, b = max(mib[q:2 * q]), max(mib[-q:])
    print(f"samples {len(mib)} (every 0.5 s); train exit {sys.argv[2]}; peak MiB in the second quarter {a:.0f}, "
          f"in the last quarter {b:.0f}: growth {100 * (b - a) / max(a, 1):+.1f}% ({'flat' if b <= a * 1.05 else 'GROWING'})\n")
EOF
fi

if { [ "$phase" = "train" ] || [ "$phase" = "all" ]; } && [ -f $G/dinov2-vits14-f16.safetensors.xz ]; then
  say "4. accuracy at 224 px"
  weights=/tmp/dinov2-vits14-f16.safetensors
  xz -dc $G/dinov2-vits14-f16.safetensors.xz >$weights
  start=$(date +%s)
  "$mosa" train --method adapter --model dinov2-vits14 --weights $weights \
    --dataset vtab:datasets/mini-vtab/emoji_category --resolution 224 --epochs 3 --warmup-epochs 1 --batch-size 64 \
    --out "$OUT/acc-run" >"$OUT/acc-train.log" 2>&1
  rc=$?
  secs=$(($(date +%s) - start))
  $py - "$OUT/acc-run/summary.json" docs/results/gpu/cpu_reference.json "$rc" "$secs" >>"$report" <<'EOF'
import json, math, sys
print("## 4. Accuracy at 224 px (DINOv2 ViT-S/14 f16 weights, adapter, emoji_category, 3 epochs)\n")
try:
    gpu = json.load(open(sys.argv[1]))
    cpu = json.load(open(sys.argv[2]))
except Exception as e:
    print(f"missing result ({e}); train exit {sys.argv[3]}\n")
    sys.exit(0)
def acc(s):
    return s.get("test_at_best_val", s.get("test_accuracy"))
n = cpu.get("test_images") or 1
g, c = acc(gpu), acc(cpu)
half = 1.96 * math.sqrt(max(c * (1 - c), 1e-9) / n)
verdict = "within" if abs(g - c) <= half else "OUTSIDE"
print(f"GPU {g:.4f}, CPU {c:.4f} on {n} test images; CPU 95% interval ±{half:.4f}: {verdict}; GPU wall {sys.argv[4]} s, train exit {sys.argv[3]}\n")
EOF
fi
say "done: $report"
cat "$report"
