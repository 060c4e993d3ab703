"""The LM head's GEMV without a norm (its input written by the persistent step), tile sweep at 1.3B: int8 rows
with fp16 row scales and fp16 rows, 50288 x 2048, batch 1, 20 calls in a CUDA graph (the 103 / 206 MB do not fit
the L2, so every call reads HBM).

    PYTHONPATH=src python benchmarks/head_tiles.py [--only int8 fp16] [--out head_tiles.json]
"""

import argparse
import json

import torch
from persistent_phases import _time  # (this folder: the same graph timing)

from ssmquant.kernels.triton.gemv import gemv

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--out", default=None)
ap.add_argument("--only", nargs="*", default=None,
                help="only these heads (int8, fp16), at the default tile, 4 rows x 512 x 2 warps and 8 x 512 x 4")
a = ap.parse_args()

torch.manual_seed(0)
N, K = 50288, 2048
x = torch.randn(1, K, device="cuda").half()
out = torch.empty(1, N, device="cuda")
q = torch.randint(-127, 128, (N, K), device="cuda", dtype=torch.int8)
s = (torch.rand(N, device="cuda") * 0.01).half()
w16 = torch.randn(N, K, device="cuda").half()
rows = []
cfgs = [None] + [{"BN": bn, "BKW": bkw, "num_warps": nw} for bn in (4, 8, 16, 32) for bkw in (256, 512, 1024, 2048)
                 for nw in (2, 4, 8) if bn * bkw <= 32768]
heads = [("int8", q, s, {}), ("fp16", w16, None, {})]
if a.only:
    heads = [h for h in heads if h[0] in a.only]
    cfgs = cfgs[:1] + [c for c in cfgs[1:] if (c["BN"], c["BKW"], c["num_warps"]) in {(4, 512, 2), (8, 512, 4)}]
for name, w, rs, extra in heads:
    for c in cfgs:
        cc = {**(c or {}), **extra} or None
        try:
            us = _time(lambda w=w, rs=rs, cc=cc: gemv(x, w, out=out, row_scale=rs, config=cc), 20, 7)
        except Exception as e:  # noqa: BLE001  (a tile that does not compile is skipped)
            print(name, c, "failed", str(e)[:80])
            continue
        gb = w.numel() * w.element_size() / us / 1e3
        rows.append({"head": name, "cfg": cc, "us": us, "GBps": gb})
        print(f"{name} {cc} {us:7.2f} us {gb:7.0f} GB/s", flush=True)
if a.out:
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)
