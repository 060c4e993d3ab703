"""lm-evaluation-harness adapter: ssmquant models as ``--model ssmquant`` in lm-eval 0.4.13.

    ssmquant lm-eval --model ssmquant --model_args pretrained=DIR --tasks hellaswag --limit 100

``SSMQuantLM`` implements lm-eval's three request types on top of this package's scorer, so the harness and
``ssmquant eval`` share one code path for loglikelihoods:

* ``loglikelihood``: ``scoring.encode_pair`` + ``scoring.score_pairs`` (lm-eval's causal tokenization; batched,
  right-padded);
* ``loglikelihood_rolling``: the text behind one EOS token, in disjoint windows of ``max_length`` tokens where every
  window after the first keeps a full ``max_length`` context (``perplexity.strided_windows`` with
  stride = context, which is lm-eval's ``get_rolling_token_windows``);
* ``generate_until``: greedy decoding, re-running the model on the whole prefix each step (no cache: simple and
  exact, fine for the short answers of harness tasks), stopping at EOS, at ``max_gen_toks`` or at the first
  ``until`` string, which is cut off as lm-eval's HF backend does.

Importing this module needs lm-eval and registers the adapter under the name ``ssmquant``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..errors import SSMQuantError
from .perplexity import strided_windows
from .scoring import encode_pair, forward_logits, model_device, score_pairs

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:
    raise SSMQuantError("the lm-eval adapter needs lm-evaluation-harness: pip install 'lm-eval==0.4.13' "
                        "(or pip install 'ssmquant[eval]')") from None


@register_model("ssmquant")
class SSMQuantLM(LM):
    """An lm-eval ``LM`` over an ssmquant model (or any module mapping ids (b, l) to logits (b, l, V)).

    Built by lm-eval from ``--model_args pretrained=PATH[,batch_size=..,max_length=..,device=..]``, or directly
    from Python with ``SSMQuantLM(model=m, tokenizer=tok)``.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        tokenizer_path: str | None = None,
        batch_size: int | str = 16,
        max_length: int = 2048,
        max_gen_toks: int = 256,
        device: str | None = None,
        **unused: Any,  # lm-eval also passes e.g. max_batch_size; they do not apply here
    ) -> None:
        super().__init__()
        if model is None:
            if pretrained is None:
                raise SSMQuantError("--model ssmquant needs --model_args pretrained=DIR (a saved ssmquant model)")
            import ssmquant

            model = ssmquant.load_model(pretrained)
        if tokenizer is None:
            import ssmquant

            src = tokenizer_path or pretrained
            if src is None:
                raise SSMQuantError("SSMQuantLM needs a tokenizer (tokenizer=... or tokenizer_path=...)")
            tokenizer = ssmquant.load_tokenizer(src)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else str(model_device(model))
        elif str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # lm-eval's CLI asks for cuda by default; its HF backend falls back the same way
        self._device = torch.device(device)
        self.model = model.to(self._device).eval() if hasattr(model, "to") else model
        self.tokenizer = tokenizer
        # "auto" / "auto:N" are lm-eval's batch-size search, which needs HF internals; use the default instead.
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.max_length = int(max_length)
        self.max_gen_toks = min(int(max_gen_toks), self.max_length - 1)

    # ---- lm-eval's three request types ----

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, ctx, cont) for ctx, cont in (r.args for r in requests)]
        out = score_pairs(self.model, pairs, batch_size=self.batch_size, max_length=self.max_length,
                          device=self._device)
        for r, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", r.args, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise SSMQuantError("loglikelihood_rolling needs a tokenizer with an EOS token as the document prefix")
        windows, owner = [], []
        for k, r in enumerate(requests):
            w = strided_windows([eos] + self.tokenizer.encode(r.args[0]), self.max_length, self.max_length)
            windows += w
            owner += [k] * len(w)
        scores = score_pairs(self.model, windows, batch_size=self.batch_size, max_length=self.max_length,
                             device=self._device)
        totals = [0.0] * len(requests)
        for k, (ll, _) in zip(owner, scores):
            totals[k] += ll
        for r, ll in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, ll)
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for r in requests:
            context, gen_kwargs = r.args
            out.append(self._greedy(context, dict(gen_kwargs or {})))
            self.cache_hook.add_partial("generate_until", r.args, out[-1])
        return out

    def _greedy(self, context: str, kw: dict) -> str:
        until = kw.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        eos = self.tokenizer.eos_token_id
        max_new = int(kw.get("max_gen_toks", self.max_gen_toks))
        if max_new >= self.max_length:
            raise SSMQuantError(f"max_gen_toks={max_new} must be below max_length={self.max_length}")
        ids = self.tokenizer.encode(context) if context else [eos]
        ids = ids[-(self.max_length - max_new):]
        vocab = self.tokenizer.vocab_size  # padded embedding rows are not tokens
        new: list[int] = []
        text = ""
        for _ in range(max_new):
            x = torch.tensor([ids + new], dtype=torch.long, device=self._device)
            nxt = int(forward_logits(self.model, x)[0, -1, :vocab].argmax())
            if nxt == eos:
                break
            new.append(nxt)
            text = self.tokenizer.decode(new)
            if any(u in text for u in until):
                break
        for u in until:  # cut at the earliest stop string, as lm-eval does
            text = text.split(u)[0]
        return text


def register_lm_eval() -> type:
    """Make ``--model ssmquant`` known to lm-eval (importing this module already did); returns the class."""
    return SSMQuantLM


def run_lm_eval_cli(argv: list[str]) -> None:
    """Run lm-eval's command line with the ``ssmquant`` model registered, e.g.
    ``run_lm_eval_cli(["--model", "ssmquant", "--model_args", "pretrained=DIR", "--tasks", "hellaswag"])``."""
    from lm_eval.__main__ import cli_evaluate

    register_lm_eval()
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]  # lm-eval's parser reads sys.argv itself
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
