#!/usr/bin/env python3
"""PyTorch's side of `cargo xtask bench-merge`: the same synthetic sparse experts (ViT-B/16-shaped
weights: patch embedding + 48 block linears, 86 M entries; each expert keeps `density` of each
weight at random positions) merged with the paper's overlap-mean, W += Σ Δ / max(C, 1), by the
fastest scatter variants we know, in memory, with 2 threads. Indices are int64 (what torch's
scatter ops take) and values f32.

    python3 scripts/bench_merge_pytorch.py --experts 20 --density 0.05

Prints the median seconds of each variant (after one warm-up run) and the best.
"""
import argparse
import statistics
import time

import torch

SHAPES = [(768, 768)] + [s for _ in range(12) for s in [(2304, 768), (768, 768), (3072, 768), (768, 3072)]]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--experts", type=int, default=20)
    p.add_argument("--density", type=float, default=0.05)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    base = [torch.rand(o * i, generator=g) - 0.5 for o, i in SHAPES]
    experts = []
    for t in range(a.experts):
        e = []
        for w in base:
            n = w.numel()
            idx = torch.randint(0, n, (int(round(a.density * n)),), generator=g).unique()  # sorted, unique
            e.append((idx, torch.rand(idx.numel(), generator=g) - 0.5))
        experts.append(e)

    def per_expert_index_add():
        for k, w in enumerate(base):
            s = torch.zeros_like(w)
            c = torch.zeros_like(w)
            for e in experts:
                idx, val = e[k]
                s.index_add_(0, idx, val)
                c.index_add_(0, idx, torch.ones_like(val))
            w.add_(s / c.clamp_(min=1))

    def concatenated_scatter_add():
        for k, w in enumerate(base):
            idx = torch.cat([e[k][0] for e in experts])
            val = torch.cat([e[k][1] for e in experts])
            s = torch.zeros_like(w).scatter_add_(0, idx, val)
            c = torch.zeros_like(w).scatter_add_(0, idx, torch.ones_like(val))
            w.add_(s / c.clamp_(min=1))

    def bincount():
        for k, w in enumerate(base):
            idx = torch.cat([e[k][0] for e in experts])
            val = torch.cat([e[k][1] for e in experts])
            n = w.numel()
            s = torch.bincount(idx, weights=val, minlength=n).to(w.dtype)
            c = torch.bincount(idx, minlength=n).to(w.dtype)
            w.add_(s / c.clamp_(min=1))

    best = None
    for name, f in [("index_add_ per expert", per_expert_index_add), ("scatter_add_ concatenated", concatenated_scatter_add), ("bincount", bincount)]:
        times = []
        for i in range(a.iters + 1):
            t0 = time.perf_counter()
            f()
            dt = time.perf_counter() - t0
            if i:
                times.append(dt)
        m = statistics.median(times)
        print(f"{name}: median {m:.3f} s over {a.iters} runs")
        best = m if best is None else min(best, m)
    print(f"best: {best:.3f} s (torch {torch.__version__}, {a.threads} threads, {a.experts} experts at {a.density})")


if __name__ == "__main__":
    main()
