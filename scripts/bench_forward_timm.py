"""timm's inference speed on this CPU, the counterpart of `mosa bench forward`: random weights
(no download), evaluation mode, torch.inference_mode, the same batch and resolution, median of
timed iterations after warm-up. Run beside `mosa bench forward` on the same idle machine:

  python scripts/bench_forward_timm.py --model swin_tiny_patch4_window7_224 --batch 8 --iters 5
  mosa bench forward --model swin-t --batch 8 --resolution 224 --iters 5
"""
import argparse, statistics, time

import timm
import torch

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--resolution", type=int, default=224)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--iters", type=int, default=5)
p.add_argument("--threads", type=int, default=torch.get_num_threads())
a = p.parse_args()
torch.set_num_threads(a.threads)
m = timm.create_model(a.model, pretrained=False, num_classes=100).eval()
x = torch.randn(a.batch, 3, a.resolution, a.resolution)
times = []
with torch.inference_mode():
    for i in range(a.warmup + a.iters):
        t = time.perf_counter()
        m(x)
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
med = statistics.median(times)
print(f"| timm {timm.__version__} / torch {torch.__version__} ({a.threads} threads) | {a.model} | {a.resolution} | {a.batch} | forward | {med:.3f} | {min(times):.3f} | {max(times):.3f} | {a.batch / med:.1f} |")
