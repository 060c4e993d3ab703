#!/usr/bin/env python3
"""Pretrain the bundled Mamba-2 teacher (run on the GPU machine), then measure it for its model card.

    # here: tokenize the corpus once and pack the token-cache entry to carry it (≈ 20 MB)
    python scripts/build_corpus.py --out build/corpus
    python scripts/train_tokenizer.py --corpus build/corpus --vocab-size 8192 --out build/tokenizer-8k
    python scripts/train_teacher.py pack --corpus build/corpus --tokenizer build/tokenizer-8k --carry .carry
    # GPU machine (device tool, carry .carry):
    python scripts/train_teacher.py train --carry .carry --out $OUT/teacher --tokens 40M

``train`` runs ``ssmquant pretrain`` with the settings below (exactly the command a user would type), then writes
``report.json``: held-out perplexity of the bundled sample (``ssmquant.eval.perplexity``, context 512 stride 256)
next to a unigram baseline's (add-one smoothed token frequencies of the teacher's training tokens, scored on the
same token stream), wall time and device.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src/ssmquant/assets/sample/heldout.txt"
MODEL_CONFIG = REPO / "scripts/teacher_config.json"
# Settings of the committed teacher (the model card quotes them).
TRAIN_FLAGS = ["--seq-len", "512", "--micro-batch", "64", "--grad-accum", "1", "--lr", "3e-3", "--warmup-frac",
               "0.02", "--min-lr-ratio", "0.1", "--weight-decay", "0.1", "--seed", "0", "--eval-sequences", "32",
               "--log-every", "25"]


def pack(args) -> None:
    sys.path.insert(0, str(REPO / "src"))
    from ssmquant.data import build_token_dataset
    from ssmquant.io.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer, fallback=None)
    ds = build_token_dataset([str(Path(args.corpus) / "train.jsonl")], tok, valid_fraction=0.005, seed=0,
                             cache_dir=args.cache_dir)
    carry = Path(args.carry)
    carry.mkdir(parents=True, exist_ok=True)
    with tarfile.open(carry / "teacher_tokens.tar.xz", "w:xz", preset=6) as tf:
        tf.add(ds.path, arcname="tokens")
    shutil.copy(Path(args.tokenizer) / "tokenizer.json", carry / "tokenizer.json")
    print(f"packed {ds} -> {carry}/teacher_tokens.tar.xz "
          f"({(carry / 'teacher_tokens.tar.xz').stat().st_size / 1e6:.1f} MB)")


def unigram_ppl(train_tokens: np.ndarray, eval_tokens: list[int], vocab: int) -> float:
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(math.exp(-logp[np.asarray(eval_tokens[1:])].mean()))


def train(args) -> None:
    carry = Path(args.carry)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(carry / "teacher_tokens.tar.xz") as tf:
        tf.extractall(work, filter="data")
    base = [sys.executable, "-m", "ssmquant", "pretrain", "--model-config", str(MODEL_CONFIG),
            "--tokenizer", str(carry / "tokenizer.json"), "--data", str(work / "tokens"), "--no-progress",
            *TRAIN_FLAGS, *args.extra]
    tokens = args.tokens
    if tokens == "auto":
        # Measure throughput for a few steps, then take as many whole millions of tokens as fit the budget.
        probe = work / "probe"
        subprocess.run([*base, "--tokens", "100M", "--out", str(probe), "--overwrite", "--stop-after-steps", "30",
                        "--log-every", "10"], check=True)
        recs = [json.loads(x) for x in (probe / "metrics.jsonl").read_text().splitlines()]
        tok_s = [r["tok_per_s"] for r in recs if "tok_per_s" in r][-1]
        tokens = f"{max(1, min(args.max_tokens_m, int(tok_s * args.budget_s / 1e6)))}M"
        print(f"probe: {tok_s:,.0f} tok/s -> --tokens {tokens}", flush=True)
    cmd = [*base, "--tokens", tokens, "--out", args.out, "--overwrite"]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0

    sys.path.insert(0, str(REPO / "src"))
    import torch

    import ssmquant
    from ssmquant.data import open_token_dataset
    from ssmquant.eval.perplexity import perplexity

    model = ssmquant.load_model(Path(args.out) / "model", device="cuda" if torch.cuda.is_available() else "cpu")
    tok = ssmquant.load_tokenizer(Path(args.out) / "model")
    with torch.no_grad():
        ppl = perplexity(model, tok, SAMPLE, context=512, stride=256, batch_size=16)
    text = SAMPLE.read_text()
    eval_tokens = [tok.eos_token_id] + tok.encode(text)
    uni = unigram_ppl(open_token_dataset(work / "tokens").train_tokens, eval_tokens, tok.vocab_size)
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    report = {"heldout_sample": "src/ssmquant/assets/sample/heldout.txt", "heldout_ppl": ppl["ppl"],
              "heldout_tokens": ppl["n_tokens"], "unigram_ppl": uni, "train_val_ppl": summary.get("val_ppl"),
              "tokens": summary.get("tokens"), "wall_s": wall, "parameters": model.num_parameters(),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "command": " ".join(cmd[1:])}
    (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="tokenize the corpus here and pack it for the GPU machine")
    a.add_argument("--corpus", default="build/corpus")
    a.add_argument("--tokenizer", default="build/tokenizer-8k")
    a.add_argument("--cache-dir", default="build/tokens")
    a.add_argument("--carry", default=".carry")
    a.set_defaults(func=pack)
    b = sub.add_parser("train", help="pretrain the teacher from a packed carry folder and write report.json")
    b.add_argument("--carry", default=".carry")
    b.add_argument("--workdir", default="/tmp/teacher_work")
    b.add_argument("--out", required=True)
    b.add_argument("--tokens", default="40M", help="training tokens, or 'auto' (probe speed, fill --budget-s)")
    b.add_argument("--budget-s", type=float, default=400.0, help="seconds of training for --tokens auto")
    b.add_argument("--max-tokens-m", type=int, default=80, help="cap for --tokens auto, in millions")
    b.add_argument("extra", nargs="*", help="further ssmquant pretrain flags (after --)")
    b.set_defaults(func=train)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
