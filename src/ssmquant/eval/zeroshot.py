"""Zero-shot scoring of one task: items -> loglikelihoods -> per-item metrics -> task metrics with standard errors.

Metrics are those of lm-eval 0.4.13's ``ConfigurableTask.process_results``:

* ``acc``: the choice with the highest loglikelihood is the gold one (``np.argmax``: ties go to the first choice).
* ``acc_norm``: the same after dividing each loglikelihood by the *character* length of its choice string
  (``len(choice)``, without the leading space; byte length differs only for non-ASCII text, and lm-eval calls
  that variant ``acc_bytes``).
* LAMBADA: ``acc`` = the target word is the greedy continuation (every token the argmax), ``perplexity`` =
  exp(-mean loglikelihood of the target word).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .scoring import encode_pair, score_pairs
from .stats import mean_stderr, perplexity_stderr
from .tasks import TASKS, Item, TaskSpec, chance_level, load_items


def item_metrics(spec: TaskSpec, item: Item, scores: list[tuple[float, bool]]) -> dict[str, float]:
    """Per-item metric values from the (loglikelihood, is_greedy) of each of the item's requests."""
    if spec.output_type == "loglikelihood":
        ll, greedy = scores[0]
        return {"acc": float(greedy), "ll": ll}
    lls = np.array([ll for ll, _ in scores])
    lengths = np.array([float(len(c)) for c in item.choices])
    out = {"acc": float(np.argmax(lls) == item.gold)}
    if "acc_norm" in spec.metrics:
        out["acc_norm"] = float(np.argmax(lls / lengths) == item.gold)
    return out


def aggregate(spec: TaskSpec, per_item: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Task metrics {name: {"value", "stderr"}} from per-item values."""
    out = {}
    for m in spec.metrics:
        if m == "perplexity":
            ll = per_item["ll"]
            out[m] = {"value": math.exp(-float(np.mean(ll))), "stderr": perplexity_stderr(ll)}
        else:
            out[m] = {"value": float(np.mean(per_item[m])), "stderr": mean_stderr(per_item[m])}
    return out


def score_items(model, tokenizer, items: list[Item], *, batch_size: int = 16, max_length: int = 2048,
                device=None, progress=None) -> list[list[tuple[float, bool]]]:
    """(loglikelihood, is_greedy) per request of every item, batched across items."""
    pairs = [encode_pair(tokenizer, c, x) for it in items for c, x in it.requests]
    flat = score_pairs(model, pairs, batch_size=batch_size, max_length=max_length, device=device,
                       progress=progress)
    out, k = [], 0
    for it in items:
        out.append(flat[k:k + len(it.requests)])
        k += len(it.requests)
    return out


def run_task(
    model,
    tokenizer,
    task: str,
    *,
    limit: int | None = None,
    split: str | None = None,
    data_dir: str | Path | None = None,
    batch_size: int = 16,
    max_length: int = 2048,
    device=None,
    progress: bool = False,
    items: list[Item] | None = None,
) -> dict:
    """Score one task; ``items`` (already loaded) skips loading so a teacher sees exactly the same items.

    Returns ``{"task", "split", "source", "n", "chance", "headline", "metrics", "items"}``; ``items`` maps each
    per-item quantity (acc, acc_norm, ll) to a list in document order.
    """
    spec = TASKS[task]
    source = "given"
    if items is None:
        items, source = load_items(task, split=split, data_dir=data_dir, limit=limit)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(it.requests) for it in items), desc=task, unit="req", leave=False)
    scores = score_items(model, tokenizer, items, batch_size=batch_size, max_length=max_length, device=device,
                         progress=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    per_item: dict[str, list[float]] = {}
    for it, sc in zip(items, scores):
        for k, v in item_metrics(spec, it, sc).items():
            per_item.setdefault(k, []).append(v)
    return {
        "task": task,
        "split": split or spec.split,
        "source": source,
        "n": len(items),
        "chance": chance_level(items, spec),
        "headline": spec.headline,
        "metrics": aggregate(spec, per_item),
        "items": per_item,
    }
