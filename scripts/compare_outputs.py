#!/usr/bin/env python3
"""Max |difference| between `mosa forward` outputs (from parity_fixtures.sh) and the references.
usage: compare_outputs.py OUTDIR FIXTURES_DIR [--bound B]   (default bound 1e-4, the CPU build's;
scripts/gpu_check.sh passes 1e-2 for TF32 matmuls. Needs numpy + safetensors; not used by the product)"""
import sys, glob, os
import numpy as np
from safetensors.numpy import load_file
out, fx = sys.argv[1], sys.argv[2]
bound = float(sys.argv[sys.argv.index("--bound") + 1]) if "--bound" in sys.argv else 1e-4
worst = 0.0
for f in sorted(glob.glob(os.path.join(out, "*.safetensors"))):
    weights, io, _ = os.path.basename(f).rsplit(".", 2)
    got, ref = load_file(f), load_file(os.path.join(fx, io + ".safetensors"))
    pairs = [("tokens", "tokens"), ("pre_logits", "pre_logits"), ("logits", "logits")] if "tokens" in ref else [("tokens", "last_hidden_state")]
    diffs = {a: float(np.abs(got[a] - ref[b]).max()) for a, b in pairs}
    worst = max(worst, *diffs.values())
    print(f"{weights:<32} " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
print(f"worst max |diff|: {worst:.2e} ({'within' if worst <= bound else 'OVER'} the {bound:g} bound)")
sys.exit(0 if worst <= bound else 1)
