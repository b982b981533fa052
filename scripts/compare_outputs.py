#!/usr/bin/env python3
"""Max |difference| between `mosa forward` outputs (from parity_fixtures.sh) and the references.
usage: compare_outputs.py OUTDIR FIXTURES_DIR   (needs numpy + safetensors; not used by the product)"""
import sys, glob, os
import numpy as np
from safetensors.numpy import load_file
out, fx = sys.argv[1], sys.argv[2]
worst = 0.0
for f in sorted(glob.glob(os.path.join(out, "*.safetensors"))):
    weights, io, _ = os.path.basename(f).rsplit(".", 2)
    got, ref = load_file(f), load_file(os.path.join(fx, io + ".safetensors"))
    pairs = [("tokens", "tokens"), ("pre_logits", "pre_logits"), ("logits", "logits")] if "tokens" in ref else [("tokens", "last_hidden_state")]
    diffs = {a: float(np.abs(got[a] - ref[b]).max()) for a, b in pairs}
    worst = max(worst, *diffs.values())
    print(f"{weights:<32} " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
print(f"worst max |diff|: {worst:.2e} ({'within' if worst <= 1e-4 else 'OVER'} the 1e-4 bound)")
sys.exit(0 if worst <= 1e-4 else 1)
