"""Writes crates/mosa-models/tests/data/swin_official.pth: the fixture's original-release Swin
weights (../shared/fixtures/swin_official.safetensors) as the release ships them — a torch.save'd
dict with the weights under `model`, plus the buffers the release also stores
(`relative_position_index` int64, `attn_mask` float). Run: python scripts/make_swin_pth.py"""
import os, sys
import torch
from safetensors.torch import load_file

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
fixtures = os.environ.get("MOSA_FIXTURES", os.path.join(root, "..", "shared", "fixtures"))
sd = load_file(os.path.join(fixtures, "swin_official.safetensors"))
w = 4
coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
index = (rel[:, :, 0] + w - 1) * (2 * w - 1) + rel[:, :, 1] + w - 1
for k in list(sd):
    if k.endswith("attn.relative_position_bias_table"):
        sd[k.replace("relative_position_bias_table", "relative_position_index")] = index.clone()
        if ".blocks.1." in k:
            sd[k.replace("attn.relative_position_bias_table", "attn_mask")] = torch.zeros(4, w * w, w * w)
out = os.path.join(root, "crates", "mosa-models", "tests", "data", "swin_official.pth")
torch.save({"model": sd, "epoch": 299}, out)
print(out, os.path.getsize(out), "bytes")
