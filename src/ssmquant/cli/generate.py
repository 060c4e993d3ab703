"""``ssmquant generate``."""

from __future__ import annotations

import argparse
import sys

from ..errors import SSMQuantError
from .common import device_args, resolve_device


def register(sub) -> None:
    p = sub.add_parser("generate", help="stream a continuation of a prompt",
                       description="Load a model and its tokenizer and stream sampled text.",
                       epilog='example: ssmquant generate state-spaces/mamba2-130m --prompt "Hello" --top-p 0.9',
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint directory or Hub repo id")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json file or directory/Hub id (default: the model's own, else GPT-NeoX-20B)")
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1.0 = off (default)")
    g.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    device_args(p)
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> None:
    import torch

    from ..io.checkpoints import load_model
    from ..io.tokenizer import load_tokenizer

    if args.max_new_tokens < 0:
        raise SSMQuantError("--max-new-tokens must be >= 0")
    if not 0 < args.top_p <= 1:
        raise SSMQuantError("--top-p must be in (0, 1]")
    device = resolve_device(args.device)
    dtype = args.dtype or ("fp32" if device == "cpu" else None)
    model = load_model(args.model, device=device, dtype=dtype)
    tok = load_tokenizer(args.tokenizer or args.model)
    ids = tok.encode(args.prompt)
    if not ids:
        raise SSMQuantError("--prompt encodes to no tokens")
    if max(ids) >= model.config.padded_vocab_size:
        raise SSMQuantError(f"tokenizer ids reach {max(ids)} but the model has {model.config.padded_vocab_size} "
                            "embedding rows: this tokenizer does not belong to this model")
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    generated: list[int] = []
    printed = 0

    def stream(next_ids: torch.Tensor) -> None:
        nonlocal printed
        generated.append(int(next_ids[0]))
        text = tok.decode(generated)
        # Hold back a trailing partial UTF-8 character until the next token completes it.
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[printed:])
            sys.stdout.flush()
            printed = len(text)

    model.generate(torch.tensor([ids]), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed, eos_token_id=tok.eos_token_id,
                   vocab_size=tok.vocab_size, callback=stream)
    sys.stdout.write("\n")


