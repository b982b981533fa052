"""Writes crates/mosa-models/tests/data/swin_pad36_io.safetensors: timm's Swin fixture weights
(../shared/fixtures/swin.safetensors) in `SwinTransformer(img_size=36)` — token grids 18 and 9,
not whole windows of 4, so timm pads them — on a seeded input, with its outputs (`features`
NHWC, `pre_logits`, `logits`). Run: python scripts/make_swin_pad_io.py (timm 1.0.31)."""
import json, os
import torch
from safetensors.torch import load_file, save_file
from timm.models.swin_transformer import SwinTransformer

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
fixtures = os.environ.get("MOSA_FIXTURES", os.path.join(root, "..", "shared", "fixtures"))
kwargs = dict(json.load(open(os.path.join(fixtures, "swin.json")))["kwargs"], img_size=36)
m = SwinTransformer(**kwargs)
m.load_state_dict(load_file(os.path.join(fixtures, "swin.safetensors")))
m.eval()
x = torch.randn(2, 3, 36, 36, generator=torch.Generator().manual_seed(3407))
with torch.no_grad():
    f = m.forward_features(x)
    pre = m.forward_head(f, pre_logits=True)
    logits = m.forward_head(f)
out = os.path.join(root, "crates", "mosa-models", "tests", "data", "swin_pad36_io.safetensors")
save_file({"input": x, "features": f.contiguous(), "pre_logits": pre, "logits": logits}, out)
print(out, tuple(f.shape), [tuple(b.window_size) for s in m.layers for b in s.blocks], [tuple(b.shift_size) for s in m.layers for b in s.blocks])
