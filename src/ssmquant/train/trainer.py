"""The one training loop: from-scratch pretraining, ternary QAT + distillation and DF-SSM all run through it.

How this works: a *task* (``ssmquant.train.tasks``) says what is trained and how the loss is computed; this module
owns everything else, identical for every task: the run directory, data, AdamW with warm-up + cosine, gradient
accumulation and clipping, autocast, evaluation, checkpoints, resume, logging, signals and several processes.

    task = PretrainTask(model_config, tokenizer)          # or DistillTask(...), ...
    summary = train(task, TrainConfig(out="runs/x", data=["corpus/"], tokens="20M"))

Guarantees a user relies on:
* ``--resume`` continues exactly: model, optimizer, scheduler, RNG states, data position and the task's own state
  come back, so a killed and resumed run equals an uninterrupted one bit for bit (on the same device and world size);
  a changed config is refused, naming the field.
* a non-empty ``--out`` is refused unless ``--resume`` or ``--overwrite`` (and ``--overwrite`` only clears a
  directory that holds a previous run).
* SIGTERM / SIGINT / ``--time-limit`` stop at the next step boundary after writing a checkpoint.
* a NaN/Inf loss or gradient stops the run with a clear message; nothing after the last good checkpoint is saved.
* under ``torchrun`` the same code runs DDP (or FSDP2 with ``--fsdp``: parameters, gradients and optimizer state
  sharded); the global batch is micro_batch x grad_accum whatever the process count, and checkpoints hold full
  (unsharded) state, so a run resumes on any number of processes, with or without ``--fsdp``.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ..errors import TrainingError
from . import dist
from .checkpointing import load_latest_checkpoint, save_checkpoint
from .config import TrainConfig, config_differences
from .runlog import MetricsLog, environment_info, plot_metrics


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it at step boundaries."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def install(self):
        if threading_is_main():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.getsignal(s)
                signal.signal(s, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
          "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(("MT19937", np.array(st["numpy"], dtype=np.uint32), st["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(st["python"]), None))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def prepare_run_dir(cfg: TrainConfig, *, is_main: bool) -> Path:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file")
    nonempty = out.is_dir() and any(out.iterdir())
    if nonempty and not cfg.resume and not cfg.overwrite:
        raise TrainingError(f"--out {out} is not empty; pass --resume to continue that run or --overwrite to "
                            "start over")
    if cfg.resume and not (out / "run_config.json").is_file():
        raise TrainingError(f"--resume: {out} holds no run (no run_config.json)")
    if cfg.overwrite and nonempty and is_main:
        if not (out / "run_config.json").is_file():
            raise TrainingError(f"--overwrite refuses to clear {out}: it does not look like a run directory "
                                "(no run_config.json)")
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    dist.barrier()
    out.mkdir(parents=True, exist_ok=True)
    return out


def train(task, cfg: TrainConfig) -> dict:
    """Run ``task`` under ``cfg``; returns a summary dict (also written to ``RUN/summary.json``)."""
    ctx = dist.init()
    is_main = ctx.rank == 0
    log = (lambda *a: print(*a, file=sys.stderr)) if is_main else (lambda *a: None)
    out = prepare_run_dir(cfg, is_main=is_main)
    device = torch.device(cfg.device or (f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    accum = cfg.accum_per_rank(ctx.world_size)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    run_record = {"train": cfg.to_dict(), "task": task.describe(), "world_size": ctx.world_size,
                  "precision": precision, "device": str(device), "environment": environment_info()}
    if cfg.resume:
        saved = json.loads((out / "run_config.json").read_text())
        diffs = config_differences(saved.get("train", {}), run_record["train"])
        diffs += config_differences(saved.get("task", {}), run_record["task"], ignore=set())
        if diffs:
            raise TrainingError(f"--resume: the config changed since the run started ({'; '.join(diffs)}); "
                                "use the original settings or a new --out")
    elif is_main:
        (out / "run_config.json").write_text(json.dumps(run_record, indent=2, default=str) + "\n")

    # ---- data ----
    data = task.build_data(cfg, rank=ctx.rank, world_size=ctx.world_size)
    batcher = data.batcher
    val_x, val_y = data.valid

    # ---- model, optimizer, schedule ----
    model = task.build_model(device)
    if cfg.activation_checkpointing:
        _enable_activation_checkpointing(model)
    sharded = cfg.fsdp and ctx.enabled
    if sharded:
        dist.shard_fsdp(model)  # before the optimizer is built: FSDP2 replaces the parameters by sharded ones
    param_groups = task.param_groups(model, cfg)
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    total_steps = cfg.total_steps
    warmup = int(cfg.warmup_frac * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, max(1, warmup),
                                                                        cfg.min_lr_ratio))
    step, tokens_seen = 0, 0
    ckpt_dir = out / "checkpoints"
    if cfg.resume:
        found = load_latest_checkpoint(ckpt_dir, warn=log)
        if found is not None:
            path, state = found
            dist.load_full_state(model, optimizer, state["model"], state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            batcher.load_state_dict(state["data"])
            task.load_state_dict(state.get("task", {}))
            _set_rng_state(state["rng"][min(ctx.rank, len(state["rng"]) - 1)])
            step, tokens_seen = int(state["step"]), int(state["tokens"])
            log(f"resumed from {path} (step {step}, {tokens_seen:,} tokens)")
        else:
            log(f"--resume: no checkpoint in {ckpt_dir} yet; starting from step 0")
    train_model = model if sharded else dist.wrap_ddp(model, ctx, device)
    if cfg.compile:
        train_model = torch.compile(train_model)
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=step if cfg.resume else None) if is_main else None
    eval_every = cfg.eval_every or max(1, total_steps // 10)

    def autocast():
        if precision == "fp32":
            return nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    def checkpoint():
        rng = dist.gather_objects(_rng_state(), ctx)
        model_sd, optim_sd = dist.full_state(model, optimizer)   # every rank takes part in the gather
        if is_main:
            state = {"model": model_sd, "optimizer": optim_sd,
                     "scheduler": scheduler.state_dict(), "data": batcher.state_dict(), "task": task.state_dict(),
                     "rng": rng, "step": step, "tokens": tokens_seen}
            save_checkpoint(ckpt_dir, step, state, keep_last=cfg.keep_last)
        dist.barrier()

    def evaluate() -> dict:
        model.eval()
        with torch.no_grad(), autocast():
            res = task.evaluate(model, val_x.to(device), val_y.to(device))
        model.train()
        return res

    stop = _StopFlag().install()
    t_start = time.time()
    steps_this_run = 0
    bar = None
    if is_main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps * cfg.tokens_per_step, initial=step * cfg.tokens_per_step, unit="tok",
                   unit_scale=True, desc=task.name, dynamic_ncols=True, file=sys.stderr)
    stopped_early = None
    model.train()
    try:
        if step == 0:
            first = {"step": 0, "tokens": 0, **evaluate()}   # all ranks evaluate: FSDP forwards are collective
            if is_main:
                metrics.write(first)
        t_window, tok_window = time.time(), 0
        while step < total_steps:
            loss_sum = torch.zeros((), device=device)
            logs_acc: dict[str, float] = {}
            for micro in range(accum):
                x, y = next(batcher)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                sync = dist.no_sync(train_model, ctx, last=(micro == accum - 1), fsdp=sharded)
                with sync, autocast():
                    loss, parts = task.loss(train_model, x, y)
                (loss / accum).backward()
                loss_sum += loss.detach() / accum
                for k, v in parts.items():
                    logs_acc[k] = logs_acc.get(k, 0.0) + float(v) / accum
            loss_val = float(dist.all_reduce_mean(loss_sum, ctx))
            grad_norm = dist.to_float(torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
            if not math.isfinite(loss_val) or not math.isfinite(grad_norm):
                what = "loss" if not math.isfinite(loss_val) else "gradient norm"
                raise TrainingError(
                    f"{what} became {loss_val if what == 'loss' else grad_norm} at step {step + 1}; stopped. "
                    f"The last good checkpoint is kept in {ckpt_dir}; lower --lr or check the data, then --resume")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            task.after_step(model, step + 1)
            step += 1
            steps_this_run += 1
            tokens_seen += cfg.tokens_per_step
            tok_window += cfg.tokens_per_step
            if bar is not None:
                bar.update(cfg.tokens_per_step)
            if is_main and (step % cfg.log_every == 0 or step == total_steps):
                dt = max(1e-9, time.time() - t_window)
                rec = {"step": step, "tokens": tokens_seen, "loss": loss_val, "lr": scheduler.get_last_lr()[0],
                       "grad_norm": grad_norm, "tok_per_s": tok_window / dt, "elapsed_s": time.time() - t_start,
                       **logs_acc, **task.step_metrics(model, step)}
                if device.type == "cuda":
                    rec["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
                metrics.write(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{tok_window / dt:,.0f}")
                t_window, tok_window = time.time(), 0
            if step % eval_every == 0 and step < total_steps:
                res = evaluate()
                if is_main:
                    metrics.write({"step": step, "tokens": tokens_seen, **res})
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                checkpoint()
            if stop.signal is not None:
                stopped_early = f"signal {signal.Signals(stop.signal).name}"
            elif cfg.time_limit and time.time() - t_start > cfg.time_limit:
                stopped_early = f"--time-limit {cfg.time_limit:g}s"
            elif cfg.stop_after_steps and steps_this_run >= cfg.stop_after_steps:
                stopped_early = f"--stop-after-steps {cfg.stop_after_steps}"
            if stopped_early and step < total_steps:
                break
            stopped_early = None
        checkpoint()
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
    summary: dict = {"run": str(out), "step": step, "total_steps": total_steps, "tokens": tokens_seen,
                     "wall_s_this_run": time.time() - t_start}
    if stopped_early:
        summary["stopped"] = stopped_early
        log(f"stopped at step {step}/{total_steps} ({stopped_early}); checkpoint saved. "
            f"Continue with the same command and --resume.")
        dist.cleanup(ctx)
        return summary
    if sharded:
        # The final evaluation, export and report run on rank 0 with a plain (unsharded) copy of the model.
        model_sd, _ = dist.full_state(model, None)
        if is_main:
            model = task.build_model(device)
            model.load_state_dict(model_sd)
    if is_main:
        final = evaluate()
        metrics.write({"step": step, "tokens": tokens_seen, "final": True, **final})
        summary.update(final)
        task.save_final(model, out / "model")
        summary.update(task.final_report(model, out))
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if cfg.plot:
            plot_metrics(out, groups=task.plot_groups())
    dist.barrier()
    dist.cleanup(ctx)
    return summary


def _enable_activation_checkpointing(model) -> None:
    """Switch on per-block recomputation in every submodule that offers it (the Mamba-2 backbone does)."""
    found = [m for m in model.modules() if hasattr(m, "activation_checkpointing")]
    if not found:
        raise TrainingError(f"--activation-checkpointing: {type(model).__name__} does not support it")
    for m in found:
        m.activation_checkpointing = True
