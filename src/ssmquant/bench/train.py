"""Training throughput of ternary QAT + KD (the step ``ssmquant distill`` runs), with a baseline in the same run.

The step is the distillation task's own: frozen bf16 teacher forward (no_grad, CUDA-graphed: ``train/teacher.py``),
fp32-master student with ternary fake-quant projections under bf16 autocast, the chunked KD loss computed inside the
student's forward, backward, AdamW. The model's scan and norms go through ``model.dispatch`` (Triton on GPU). The baseline is a plain bf16-autocast forward + backward + AdamW of the same architecture without teacher and
without quantization (what a pretraining step costs), measured in the same process.

Reported: tokens/s of the steady state (CUDA events, median of ``reps`` steps after ``warmup``), a per-component split
(each component timed with its own events, synchronised: the split adds a little overhead of its own), peak memory,
and MFU from 6·N (student) + 2·N (teacher) FLOPs per token against ``peak_tflops``.
"""

from __future__ import annotations

import copy
import gc
import statistics
from dataclasses import dataclass

import torch

from ..model.config import preset_config
from ..model.mamba2 import Mamba2LMHeadModel
from ..quant import QuantConfig, quantize_
from ..train.losses import kd_loss
from ..train.teacher import TeacherForward
from .gpu import environment


@dataclass
class TrainBenchConfig:
    preset: str = "1.3b"
    seq_len: int = 2048
    micro_batch: int = 1
    group_size: int = 128
    reps: int = 5
    warmup: int = 2
    peak_tflops: float = 989.0      # H100 SXM dense bf16
    baseline: bool = True
    cuda_graphs: bool = True        # replay the blocks' forward and backward (model/graphs.py), as distill does
    activation_checkpointing: bool = False  # recompute blocks in backward (as --activation-checkpointing); no graphs


def _step_fns(student, teacher, opt, x, *, quantized: bool):
    teacher_forward = TeacherForward(teacher) if teacher is not None else None   # as DistillTask.loss runs it

    def teacher_fwd():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return teacher_forward(x)

    def student_fwd(ht):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if quantized:
                return student(x, head_fn=lambda hs, head: kd_loss(hs, head, ht, teacher.lm_head, x))[0]
            logits = student(x)
            return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten())

    def backward(loss):
        loss.backward()

    def optim():
        opt.step()
        opt.zero_grad(set_to_none=True)

    return teacher_fwd, student_fwd, backward, optim


def _measure(student, teacher, opt, cfg: TrainBenchConfig, *, quantized: bool) -> dict:
    vocab = student.config.vocab_size
    x = torch.randint(0, vocab, (cfg.micro_batch, cfg.seq_len), device="cuda")
    tf, sf, bw, op = _step_fns(student, teacher, opt, x, quantized=quantized)

    def step():
        ht = tf() if quantized else None
        loss = sf(ht)
        bw(loss)
        op()

    for _ in range(cfg.warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(cfg.reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    split = {"teacher_fwd": [], "student_fwd_and_loss": [], "backward": [], "optimizer": []}
    for _ in range(cfg.reps):
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(5)]
        ev[0].record()
        ht = tf() if quantized else None
        ev[1].record()
        loss = sf(ht)
        ev[2].record()
        bw(loss)
        ev[3].record()
        op()
        ev[4].record()
        torch.cuda.synchronize()
        for i, k in enumerate(split):
            split[k].append(ev[i].elapsed_time(ev[i + 1]))
    ms = statistics.median(times)
    tokens = cfg.micro_batch * cfg.seq_len
    return {"ms_per_step": ms, "tok_per_s": tokens / (ms / 1e3),
            "split_ms": {k: statistics.median(v) for k, v in split.items()}}


def _memory_mode(model, cfg: TrainBenchConfig) -> None:
    model.backbone.activation_checkpointing = cfg.activation_checkpointing   # the backbone then skips its graphs
    model.backbone.cuda_graphs = cfg.cuda_graphs


def _measure_or_oom(model, teacher, opt, cfg: TrainBenchConfig, *, quantized: bool) -> dict:
    """``_measure`` plus peak memory; running out of memory is a result ("does it fit?"), not a crash."""
    try:
        r = _measure(model, teacher, opt, cfg, quantized=quantized)
    except torch.cuda.OutOfMemoryError:
        opt.zero_grad(set_to_none=True)
        return {"out_of_memory": True, "micro_batch": cfg.micro_batch,
                "gpu_memory_gb": torch.cuda.get_device_properties(0).total_memory / 1e9}
    r["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return r


def bench_train(cfg: TrainBenchConfig) -> dict:
    """Time QAT + KD steps (and the plain baseline) on random weights of ``cfg.preset``'s shape."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench train needs a CUDA device")
    mcfg = preset_config(cfg.preset)
    torch.manual_seed(0)
    base = Mamba2LMHeadModel(mcfg)
    base.init_weights(0)
    n_params = base.num_parameters()
    out: dict = {"bench": "train", "config": cfg.__dict__, "parameters": n_params, **environment()}
    teacher = copy.deepcopy(base).to("cuda", torch.bfloat16).eval().requires_grad_(False)
    student = copy.deepcopy(base).to("cuda")
    del base
    quantize_(student, QuantConfig(group_size=cfg.group_size, scale_mode="learnable"))
    _memory_mode(student, cfg)                               # as DistillTask.build_model sets it on one GPU
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=True)
    torch.cuda.reset_peak_memory_stats()
    qat = _measure_or_oom(student, teacher, opt, cfg, quantized=True)
    if "tok_per_s" in qat:
        flops_per_token = 6 * n_params + 2 * n_params
        qat["mfu"] = qat["tok_per_s"] * flops_per_token / (cfg.peak_tflops * 1e12)
    out["qat_kd"] = qat
    del student, opt, teacher
    # The block graphs and the modules that own them form reference cycles: without a collection their memory
    # pools stay allocated and the baseline's peak would include the QAT step's (the 2.7B baseline ran out of
    # memory that way). What is still allocated is reported, so a leak shows in the JSON.
    gc.collect()
    torch.cuda.empty_cache()
    out["allocated_before_baseline_gb"] = torch.cuda.memory_allocated() / 1e9
    if cfg.baseline:
        torch.manual_seed(0)
        plain = Mamba2LMHeadModel(mcfg).to("cuda")
        plain.init_weights(0)
        _memory_mode(plain, cfg)
        opt = torch.optim.AdamW(plain.parameters(), lr=1e-4, fused=True)
        torch.cuda.reset_peak_memory_stats()
        b = _measure_or_oom(plain, None, opt, cfg, quantized=False)
        if "tok_per_s" in b:
            b["mfu"] = b["tok_per_s"] * 6 * n_params / (cfg.peak_tflops * 1e12)
        out["baseline_plain_fwd_bwd"] = b
        if "tok_per_s" in qat and "tok_per_s" in b:
            out["ratio_qat_kd_vs_baseline"] = qat["tok_per_s"] / b["tok_per_s"]
    out["targets"] = {"must_tok_per_s": 10_700, "goal_tok_per_s": 20_000,
                      "paper_tok_per_s": 7_100, "mamba_ssm_fwd_bwd_quoted": 20_200}
    return out
