"""GPU speed benchmarks: decode, ternary GEMV, prefill. Each returns a JSON-able dict with the device, versions,
absolute numbers, the baseline measured in the same run and the ratio.

Protocol (issue 7): CUDA events around the timed region, warm-up first, the median of >= 5 repetitions; the fast
path is checked against the PyTorch model in the same run (teacher-forced logits and greedy tokens); GEMVs are timed
inside a CUDA graph over >= 50 rotating weight copies, so the weights come from HBM, not L2.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import torch


def environment() -> dict:
    import platform

    import triton

    d = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
         "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        d.update(device=p.name, sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1))
    return d


def _events_ms(fn, reps: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return out


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB, bytes read + written per second (the achievable HBM ceiling)."""
    src = torch.empty(2**28, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = statistics.median(_events_ms(lambda: dst.copy_(src), 10, 3))
    return 2 * src.numel() * 4 / (ms * 1e-3)


# ---------------------------------------------------------------- decode
@dataclass
class DecodeBenchConfig:
    preset: str = "1.3b"
    weights: str = "ternary"          # ternary | dfssm | fp16
    batch: int = 1
    prompt_len: int = 16
    new_tokens: int = 256
    reps: int = 5
    group_size: int = 128
    baseline: bool = True             # also time the fp16 fast path (and the eager PyTorch model) in the same run
    check_tokens: int = 16            # teacher-forced / greedy tokens compared against the PyTorch model
    ref_tokens: int = 8               # eager PyTorch decode steps timed (slow: tens of ms each)
    rank: int = 12                    # DF-SSM rank of U V (12: the 278 MiB configuration of docs/ptq_dfssm.md)
    head: str = "fp16"                # fp16 | int8: the (tied) embedding and LM head of the measured model
    scaffold_bits: int = 2            # DF-SSM scaffold words on the GPU: 2 (signs as ternary codes) or 1
    mma: str = "auto"                 # ternary projections on the tensor-core GEMV: auto | on | off
    pdl: str = "default"              # programmatic dependent launch (kernels/pdl.py): default | early | after | off
    state_dtype: str = "fp32"         # SSM state storage of every fast decoder timed: fp32 | fp16 | bf16
    persistent: str = "auto"          # batch 1, every layer in one kernel (cuda/persistent_decode.py): auto | on | off
    out_split: str = "auto"           # the persistent kernel's out_proj split by SSM item: auto | on | pair | off
    head_argmax: str = "auto"         # batch 1: head GEMV + greedy argmax in one kernel (cuda/head_argmax.py)

    def __post_init__(self):
        if self.weights not in ("ternary", "dfssm", "fp16"):
            raise ValueError(f"weights={self.weights!r}: use ternary, dfssm or fp16")
        if self.head not in ("fp16", "int8"):
            raise ValueError(f"head={self.head!r}: use fp16 or int8")
        if self.pdl not in _PDL:
            raise ValueError(f"pdl={self.pdl!r}: use one of {', '.join(_PDL)}")
        if self.persistent not in AUTO_ON_OFF:
            raise ValueError(f"persistent={self.persistent!r}: use one of {', '.join(AUTO_ON_OFF)}")
        if self.out_split not in _SPLIT:
            raise ValueError(f"out_split={self.out_split!r}: use one of {', '.join(_SPLIT)}")
        if self.head_argmax not in AUTO_ON_OFF:
            raise ValueError(f"head_argmax={self.head_argmax!r}: use one of {', '.join(AUTO_ON_OFF)}")
        if self.state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype={self.state_dtype!r}: use one of {', '.join(STATE_DTYPES)}")


_PDL = {"default": None, "early": "early", "after": "after", "off": False}
# --state-dtype's names (ssmquant bench decode, benchmarks/persistent_phases.py)
STATE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# auto / on / off options (--persistent, --head-argmax, --mma; benchmarks/decode_breakdown.py) as gemv_configs values
AUTO_ON_OFF = {"auto": "auto", "on": True, "off": False}
_SPLIT = {"off": False, "on": True, "pair": "pair", "auto": "auto"}


def _time_decoder(dec, prompt, cfg: DecodeBenchConfig) -> dict:
    steps = cfg.new_tokens - 1
    dec.start(prompt)
    dec.capture()

    def decode():
        dec.start(prompt)
        torch.cuda.synchronize()
        return _events_ms(lambda: dec.decode(steps), 1, 0)[0]

    decode()
    dms = [decode() for _ in range(cfg.reps)]
    e2e = _events_ms(lambda: dec.generate(prompt, cfg.new_tokens), cfg.reps, 1)
    pre = _events_ms(lambda: dec.start(prompt), cfg.reps, 1)
    return {"decode_ms_per_token": statistics.median(dms) / steps, "decode_ms_per_token_reps": [d / steps for d in dms],
            "generate_ms_per_token": statistics.median(e2e) / cfg.new_tokens, "prefill_ms": statistics.median(pre)}


@torch.no_grad()
def check_decoder(model, dec, prompt, n: int) -> dict:
    """Teacher-forced logits and greedy tokens of the fast decoder against ``model`` (the PyTorch reference)."""
    V = model.config.vocab_size
    cache = model.allocate_cache(prompt.shape[0])
    logits = [model(prompt, cache, logits_to_keep=1)[:, -1].float()]
    toks = []
    for _ in range(n):
        toks.append(logits[-1][:, :V].argmax(-1))
        logits.append(model(toks[-1][:, None], cache)[:, -1].float())
    ref_tokens = torch.stack(toks, 1)                                  # greedy tokens of the reference
    ref_logits = torch.stack(logits[1:], 1)[..., :V]
    fast_logits = dec.teacher_forced_logits(prompt, ref_tokens)[..., :V]
    err = (fast_logits - ref_logits).abs()
    rel = (err.norm() / ref_logits.norm()).item()
    top1 = (fast_logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
    fast_tokens = dec.generate(prompt, n, use_graph=True)[:, prompt.shape[1]:]
    same = (fast_tokens == ref_tokens).all(0)
    first_diff = int((~same).nonzero()[0]) if not bool(same.all()) else None
    return {"tokens_checked": n, "logits_max_abs_err": err.max().item(), "logits_rel_err": rel,
            "logits_max_abs": ref_logits.abs().max().item(), "teacher_forced_top1_agreement": top1,
            "greedy_tokens_identical": first_diff is None, "greedy_first_difference": first_diff}


def _kernels(dec) -> dict:
    """Which kernel each projection of layer 0 runs: "persistent" (every layer in one kernel,
    cuda/persistent_decode.py), "tensor_core" (cuda/ternary_mma.py) or "triton"; and the head: "head_argmax" (with
    greedy sampling, cuda/head_argmax.py) or "gemv"."""
    from ..kernels.layout_mma import MmaTernaryWeight

    L = dec.layers[0]
    head = {"head": "head_argmax" if dec.head_argmax is not None else "gemv"}
    if dec.persistent is not None:
        p = dec.persistent
        return {"in_proj": "persistent", "out_proj": "persistent", "out_split": "pair" if p.pair else p.split_out,
                **head}
    return {**{k: "tensor_core" if isinstance(getattr(L, a), MmaTernaryWeight) else "triton"
               for k, a in (("in_proj", "in_w"), ("out_proj", "out_w"))}, **head}


@torch.no_grad()
def bench_decode(cfg: DecodeBenchConfig, *, gemv_configs: dict | None = None) -> dict:
    """ms/token of the fast decoder on a random model of ``cfg.preset``'s shape, with baselines from the same run:
    our fp16 fast path and the eager PyTorch model (fp16 weights and head), mamba-ssm quoted."""
    from ..kernels.fast_decode import FastDecoder
    from ..kernels.pdl import DEFAULTS, pdl_mode
    from ..kernels.pdl import resolve as resolve_pdl
    from ..quant.int8 import quantize_int8_
    from .models import random_model, to_dfssm_, to_ternary_

    g = torch.Generator(device="cuda").manual_seed(0)
    prompt = torch.randint(0, 50277, (cfg.batch, cfg.prompt_len), device="cuda", generator=g)
    result = {"benchmark": "decode", "config": asdict(cfg), "env": environment()}
    pdl = _PDL[cfg.pdl]                     # None: each kernel kind's default (kernels/pdl.py)
    result["pdl_mode"] = {k: resolve_pdl(pdl, k) for k in DEFAULTS}
    gemv_configs = {"pdl": pdl, "scaffold_bits": cfg.scaffold_bits, "persistent": AUTO_ON_OFF[cfg.persistent],
                    "out_split": _SPLIT[cfg.out_split], "head_argmax": AUTO_ON_OFF[cfg.head_argmax],
                    **(gemv_configs or {})}
    model = random_model(cfg.preset, weights="fp16")

    def timed(state_dtype=STATE_DTYPES[cfg.state_dtype], kernels: bool = True, **configs) -> dict:
        """A fast decoder of ``model`` as it is now: its timing, which GEMVs it ran, its check against the model."""
        dec = FastDecoder(model, cfg.batch, cfg.new_tokens, state_dtype=state_dtype,
                          gemv_configs={**gemv_configs, **configs})
        return {**_time_decoder(dec, prompt, cfg), **({"kernels": _kernels(dec)} if kernels else {}),
                "check": check_decoder(model, dec, prompt, cfg.check_tokens)}

    rows = {}
    if cfg.weights == "fp16" or cfg.baseline:
        rows["fp16_fast"] = timed(kernels=False)
    if cfg.baseline and cfg.ref_tokens:
        cache = model.allocate_cache(cfg.batch)
        model(prompt, cache, logits_to_keep=1)
        tok = prompt[:, -1:]
        ms = _events_ms(lambda: model(tok, cache), cfg.ref_tokens, 2)
        rows["fp16_pytorch_eager"] = {"decode_ms_per_token": statistics.median(ms)}
    main_key = "fp16_fast"
    if cfg.weights != "fp16" or cfg.head != "fp16":
        if cfg.weights == "ternary":
            to_ternary_(model, cfg.group_size)
        elif cfg.weights == "dfssm":
            to_dfssm_(model, cfg.rank, cfg.group_size)
        if cfg.head == "int8":
            quantize_int8_(model, embedding=True, head=True)      # tied: one int8 tensor, the reference uses it too
        main_key = f"{cfg.weights}{f'_r{cfg.rank}_scaffold{cfg.scaffold_bits}bit' if cfg.weights == 'dfssm' else ''}" \
                   f"{'_int8head' if cfg.head == 'int8' else ''}" \
                   f"{f'_state_{cfg.state_dtype}' if cfg.state_dtype != 'fp32' else ''}_fast"
        mma = AUTO_ON_OFF[cfg.mma]
        rows[main_key] = timed(mma=mma)
        used = rows[main_key]["kernels"].values()
        if "head_argmax" in used:
            # The same decoder with the head's GEMV and the argmax as two launches, for the fused kernel's gain.
            rows[main_key.replace("_fast", "_head_argmax_off_fast")] = timed(mma=mma, head_argmax=False)
        if "persistent" in used:
            # The persistent kernel with out_proj split the other way (by rows, or by SSM items where it can).
            split = rows[main_key]["kernels"]["out_split"]
            rows[main_key.replace("_fast", f"_out_split_{'off' if split else 'auto'}_fast")] = \
                timed(mma=mma, out_split=False if split else "auto")
            # The same model on the per-layer kernels (three launches a layer), for the persistent kernel's gain.
            rows[main_key.replace("_fast", "_per_layer_fast")] = timed(mma=mma, persistent=False)
            used = rows[main_key.replace("_fast", "_per_layer_fast")]["kernels"].values()
        if cfg.weights == "ternary" and cfg.baseline and "tensor_core" in used:
            # The same model with every ternary projection on the Triton GEMV, for the tensor-core GEMV's gain.
            rows[main_key.replace("_fast", "_triton_gemv_fast")] = timed(mma=False)
        if cfg.baseline and pdl is not False and pdl_mode():
            # The same decoder with the other PDL release choice (kernels/pdl.py): every GEMV "after" beside a
            # decoder that runs some GEMV "early", else every GEMV "early".
            modes = {resolve_pdl(pdl, "mma" if v == "tensor_core" else "gemv") for v in used}
            other = "after" if "early" in modes else "early"
            rows[main_key.replace("_fast", f"_pdl_{other}_fast")] = timed(mma=mma, pdl=other, persistent=False)
        if cfg.baseline and cfg.state_dtype != "fp32":
            # The same decoder with the fp32 state (the default): what the smaller state buys and costs.
            rows[main_key.replace(f"_state_{cfg.state_dtype}", "")] = timed(torch.float32, mma=mma)
    result["rows"] = rows
    main = rows[main_key]["decode_ms_per_token"]
    result["main_row"] = main_key
    result["decode_ms_per_token"] = main
    result["baselines_ms_per_token"] = {
        # Quoted from issue 7 (H100, batch 1); not re-measured here.
        "mamba_ssm_fp16_cuda_graphs_quoted": {"130m": 0.79, "370m": 1.60, "780m": 2.17, "1.3b": 2.47,
                                              "2.7b": 3.99}.get(cfg.preset) if cfg.batch == 1 else None,
        **{k: v["decode_ms_per_token"] for k, v in rows.items() if k != main_key}}
    result["speedup"] = {k: v / main for k, v in result["baselines_ms_per_token"].items() if v}
    del model
    torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------- GEMV
@dataclass
class GemvBenchConfig:
    preset: str = "1.3b"
    batch: int = 1
    copies: int = 50
    reps: int = 20
    group_size: int = 128
    sweep: bool = False               # also try a grid of tile configs and report the best
    ranks: tuple = (12, 32)           # DF-SSM ranks timed beside the 1-bit scaffold


def _graph_time_per_call(calls, reps: int) -> float:
    """Median time (us) of one call when ``calls`` (list of thunks) are replayed back to back in a CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for c in calls[:2]:
            c()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in calls:
            c()
    ms = _events_ms(graph.replay, reps, 2)
    return statistics.median(ms) * 1e3 / len(calls)


def _best_config(row: dict, prefix: str):
    """The config ``_best`` found for ``prefix`` (None for the kernel's default), to time a variant with it."""
    c = row.get(f"{prefix}_config")
    return None if c == "default" else c


def _best(row: dict, prefix: str, fn, configs, reps: int, nbytes: int, peak: float) -> None:
    """Time ``fn(config)`` (a list of thunks) for each config; record the default's and the best time."""
    best = None
    for c in configs:
        try:
            us = _graph_time_per_call(fn(c), reps)
        except Exception as e:  # a tile config that does not compile is skipped, not fatal
            row.setdefault("errors", []).append(f"{prefix} {c}: {type(e).__name__}: {e}"[:300])
            continue
        row.setdefault(f"{prefix}_sweep_us", {})[str(c or "default")] = us
        if c is None:
            row[f"{prefix}_default_us"] = us
        if best is None or us < best[0]:
            best = (us, c)
    if best is None:
        return
    row[f"{prefix}_us"], row[f"{prefix}_config"] = best[0], best[1] or "default"
    row[f"{prefix}_bytes"] = nbytes
    row[f"{prefix}_frac_of_copy_bw"] = nbytes / (best[0] * 1e-6) / peak


@torch.no_grad()
def bench_gemv(cfg: GemvBenchConfig) -> dict:
    """Packed GEMVs (ours) vs cuBLAS fp16 GEMV at the in_proj / out_proj / head shapes of a preset.

    Timed inside a CUDA graph over ``copies`` rotating weight sets (more bytes than L2 holds), so every call reads
    its weights from HBM. Rows: ``ternary`` = gemv.py on 2-bit words, with programmatic dependent launch in its
    default mode where supported (kernels/pdl.py: dependents released after the wait), ``ternary_pdl_early`` with
    dependents released before it (each launch lets the next one load its weights early), ``ternary_nopdl``
    without PDL; ``ternary_mma`` = the tensor-core GEMV (kernels/cuda/ternary_mma.py) on the same codes, in its
    default mode ("early"; ``ternary_mma_pdl_after``, ``ternary_mma_nopdl`` the others); from 16 rows
    ``ternary_gemm`` = the tensor-core product (triton/gemm.py) that ``FastDecoder`` runs there; ``scaffold1`` = the 1-bit DF-SSM scaffold alone; ``dfssm_rR`` = scaffold
    + rank-R int8 correction (two launches: V x, then scaffold + U t); head: fp16 (cuBLAS, gemv.py) and int8 rows
    (gemv.py). Bytes = weights + scales (+ factors) + activations + output.
    """
    from ..kernels.cuda.ternary_mma import mma_gemv, mma_gemv_error, mma_supported
    from ..kernels.layout import GemvLowRankWeight, pack_gemv
    from ..kernels.layout_mma import mma_from_gemv
    from ..kernels.pdl import pdl_mode
    from ..kernels.prefill import GEMM_MIN_BATCH
    from ..kernels.triton.gemm import ternary_matmul
    from ..kernels.triton.gemv import gemv, gemv_ref
    from ..model.config import preset_config

    mc = preset_config(cfg.preset)
    peak = copy_bandwidth()
    out = {"benchmark": "gemv", "config": asdict(cfg), "env": environment(), "copy_bandwidth_GBps": peak / 1e9,
           "pdl": {"gemv": pdl_mode("gemv"), "mma": pdl_mode("mma")}, "shapes": {}}
    M, G = cfg.batch, cfg.group_size
    for name, (N, K) in {"in_proj": (mc.d_in_proj, mc.d_model), "out_proj": (mc.d_model, mc.d_inner),
                         "head": (mc.padded_vocab_size, mc.d_model)}.items():
        x = torch.randn(M, K, device="cuda", dtype=torch.float16)
        y = torch.empty(M, N, device="cuda", dtype=torch.float32)
        io = x.numel() * 2 + y.numel() * 4
        row = {"N": N, "K": K}
        if name != "head":
            tern, bins = [], []
            for _ in range(cfg.copies):
                codes = torch.randint(-1, 2, (N, K), device="cuda", dtype=torch.int8)
                scale = (torch.rand(N, K // G, device="cuda") + 0.5).half()
                tern.append(pack_gemv(codes, scale, G))
                bins.append(pack_gemv(torch.where(codes >= 0, 1, -1).to(torch.int8), scale, G, bits=1))
            for key, ws in (("ternary", tern), ("scaffold1", bins)):
                ref = gemv_ref(x, ws[-1])
                row[f"{key}_rel_err"] = ((gemv(x, ws[-1]) - ref).norm() / ref.norm()).item()
            configs = [None]
            if cfg.sweep:
                # One warp per 128 words of a row (gemv.default_config); rows per thread = BN.
                kwt = K // 16
                configs += [dict(BN=bn, BKW=bkw, num_warps=max(1, bkw // 128), maxnreg=mr)
                            for bkw in sorted({min(kwt, 128), min(kwt, 256)}) for bn in (4, 8, 16) for mr in (128, 168)]
            _best(row, "ternary", lambda c: [lambda w=w: gemv(x, w, out=y, config=c) for w in tern], configs,
                  cfg.reps, tern[0].nbytes() + io, peak)
            best_c = _best_config(row, "ternary")
            for key, mode in (("ternary_pdl_early", "early"), ("ternary_nopdl", False)):
                if mode and not pdl_mode():
                    continue
                _best(row, key, lambda c: [lambda w=w: gemv(x, w, out=y, config={**(c or {}), "pdl": mode})
                                           for w in tern], [best_c], cfg.reps, tern[0].nbytes() + io, peak)
            if mma_supported() and not mma_gemv_error(M, N, K, G):
                # The tensor-core GEMV (kernels/cuda/ternary_mma.py) on the same codes, repacked.
                mws = [mma_from_gemv(w) for w in tern]
                ref = gemv_ref(x, tern[-1])
                row["ternary_mma_rel_err"] = ((mma_gemv(x, mws[-1]) - ref).norm() / ref.norm()).item()
                mconfigs = [None] + ([dict(cpw=c) for c in (1, 2, 4, 8) if not mma_gemv_error(M, N, K, G, c)]
                                     if cfg.sweep else [])
                _best(row, "ternary_mma", lambda c: [lambda w=w: mma_gemv(x, w, out=y, **(c or {})) for w in mws],
                      mconfigs, cfg.reps, mws[0].nbytes() + io, peak)
                best_m = _best_config(row, "ternary_mma")
                for key, mode in (("ternary_mma_pdl_after", "after"), ("ternary_mma_nopdl", False)):
                    if mode and not pdl_mode():
                        continue
                    _best(row, key, lambda c: [lambda w=w: mma_gemv(x, w, out=y, **{**(c or {}), "pdl": mode})
                                               for w in mws], [best_m], cfg.reps, mws[0].nbytes() + io, peak)
                del mws
            if M >= GEMM_MIN_BATCH:
                # What FastDecoder runs from GEMM_MIN_BATCH rows: the tensor-core ternary product (triton/gemm.py).
                ref = gemv_ref(x, tern[-1])
                row["ternary_gemm_rel_err"] = ((ternary_matmul(x, tern[-1], out_dtype=torch.float32) - ref).norm()
                                               / ref.norm()).item()
                gconfigs = [None] + ([dict(BM=bm, BN=bn, num_warps=nw, num_stages=st) for bm in (16, 32, 64)
                                      for bn in (32, 64, 128) for nw in (4, 8) for st in (2, 3) if bm <= max(16, M)]
                                     if cfg.sweep else [])
                _best(row, "ternary_gemm", lambda c: [lambda w=w: ternary_matmul(x, w, out=y, **(c or {}))
                                                      for w in tern], gconfigs, cfg.reps, tern[0].nbytes() + io, peak)
            bconfigs = [None] + ([dict(BN=bn, BKW=bkw, num_warps=4) for bn, bkw in ((16, 64), (32, 32), (64, 64))]
                                 if cfg.sweep else [])
            _best(row, "scaffold1", lambda c: [lambda w=w: gemv(x, w, out=y, config=c) for w in bins], bconfigs,
                  cfg.reps, bins[0].nbytes() + io, peak)
            for r in cfg.ranks:
                # Four factor sets shared round-robin (U, V are small; V is read by r programs, U with the rows).
                fac = [(torch.randint(-127, 128, (N, r), device="cuda", dtype=torch.int8),
                        torch.full((N,), 1e-3, device="cuda").half(),
                        torch.randint(-127, 128, (r, K), device="cuda", dtype=torch.int8),
                        torch.full((r,), 1e-3, device="cuda").half()) for _ in range(4)]
                lws = [GemvLowRankWeight(b, *fac[i % 4]) for i, b in enumerate(bins)]
                ref = gemv_ref(x, lws[-1])
                row[f"dfssm_r{r}_rel_err"] = ((gemv(x, lws[-1]) - ref).norm() / ref.norm()).item()
                _best(row, f"dfssm_r{r}", lambda c: [lambda w=w: gemv(x, w, out=y, config=c) for w in lws],
                      [_best_config(row, "scaffold1")],
                      cfg.reps, lws[0].nbytes() + io, peak)
            del tern, bins
        else:
            q = [torch.randint(-127, 128, (N, K), device="cuda", dtype=torch.int8)
                 for _ in range(max(2, min(cfg.copies, int(6e9 // (N * K)))))]
            qs = torch.rand(N, device="cuda").half() * 1e-3
            _best(row, "int8", lambda c: [lambda w=w: gemv(x, w, out=y, row_scale=qs, config=c) for w in q],
                  [None] + ([dict(BN=bn, BKW=512, num_warps=4) for bn in (4, 16)] if cfg.sweep else []),
                  cfg.reps, N * K + N * 2 + io, peak)
            del q
        dense = [torch.randn(N, K, device="cuda", dtype=torch.float16) for _ in range(max(4, min(cfg.copies,
                 int(6e9 // (N * K * 2)))))]
        dbytes = N * K * 2 + x.numel() * 2 + y.numel() * 2
        row["cublas_fp16_us"] = _graph_time_per_call([lambda w=w: torch.matmul(x, w.t()) for w in dense], cfg.reps)
        row["cublas_fp16_frac_of_copy_bw"] = dbytes / (row["cublas_fp16_us"] * 1e-6) / peak
        _best(row, "dense_triton", lambda c: [lambda w=w: gemv(x, w, out=y, config=c) for w in dense], [None],
              cfg.reps, dbytes, peak)
        for k in ("ternary", "int8"):
            if f"{k}_us" in row:
                row[f"{k}_speedup_vs_cublas_fp16"] = row["cublas_fp16_us"] / row[f"{k}_us"]
        out["shapes"][name] = row
        del dense
    torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------- prefill
@dataclass
class PrefillBenchConfig:
    preset: str = "1.3b"
    batch: int = 1
    seqlen: int = 2048
    reps: int = 5
    group_size: int = 128


@torch.no_grad()
def bench_prefill(cfg: PrefillBenchConfig) -> dict:
    """Prompt processing (forward with cache, last logits) of the ternary model on the prefill path vs the fp16
    model; each eager and replayed from a CUDA graph."""
    from ..kernels.prefill import GraphedPrefill, prefill_model
    from .models import random_model, to_ternary_

    ids = torch.randint(0, 50277, (cfg.batch, cfg.seqlen), device="cuda")
    model = random_model(cfg.preset, weights="fp16")
    toks = cfg.batch * cfg.seqlen

    def run(m):
        cache = m.allocate_cache(cfg.batch)

        def prefill():
            # A fresh prompt each repetition: offset 0 makes the forward overwrite the cache's states (without the
            # reset, every timed call after the warm-up would continue the previous one's sequence instead).
            cache.seqlen_offset = 0
            return m(ids, cache, logits_to_keep=1)
        return prefill

    def graphed_ms(m):
        # The same prefill replayed from one CUDA graph (``GraphedPrefill``): no host overhead per kernel.
        gp = GraphedPrefill(m, cfg.batch, cfg.seqlen)
        ms = statistics.median(_events_ms(lambda: gp(ids), cfg.reps, 1))
        logits = gp(ids).float().clone()
        del gp
        torch.cuda.empty_cache()
        return ms, logits

    fp16_ms = statistics.median(_events_ms(run(model), cfg.reps, 1))
    fp16_graph_ms, _ = graphed_ms(model)
    to_ternary_(model, cfg.group_size)
    fast = prefill_model(model)
    tern_ms = statistics.median(_events_ms(run(fast), cfg.reps, 1))
    tern_graph_ms, graph_logits = graphed_ms(fast)
    # The fast path against the packed model's own forward (PackedTernaryLinear: dequantized weight, F.linear).
    ref, got = (run(m)().float() for m in (model, fast))
    out = {"benchmark": "prefill", "config": asdict(cfg), "env": environment(),
           "last_logits_rel_err_vs_model": ((got - ref).norm() / ref.norm()).item(),
           "graphed_last_logits_rel_err_vs_model": ((graph_logits - ref).norm() / ref.norm()).item(),
           "ternary_graphed_tok_per_s": toks / (tern_graph_ms * 1e-3),
           "fp16_graphed_tok_per_s": toks / (fp16_graph_ms * 1e-3),
           "ternary_tok_per_s": toks / (tern_ms * 1e-3), "fp16_pytorch_tok_per_s": toks / (fp16_ms * 1e-3),
           "mamba_ssm_fp16_tok_per_s_quoted": {(1, 2048): 18900, (8, 2048): 90000}.get((cfg.batch, cfg.seqlen))}
    out["ratio_vs_fp16"] = out["ternary_tok_per_s"] / out["fp16_pytorch_tok_per_s"]
    if out["mamba_ssm_fp16_tok_per_s_quoted"]:
        out["ratio_vs_mamba_ssm_quoted"] = out["ternary_tok_per_s"] / out["mamba_ssm_fp16_tok_per_s_quoted"]
    del model, fast
    torch.cuda.empty_cache()
    return out
