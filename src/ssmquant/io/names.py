"""Name tables between our parameter names (mamba-ssm's) and other layouts.

Ours = mamba-ssm: ``backbone.embedding.weight``, ``backbone.layers.N.norm.weight``,
``backbone.layers.N.mixer.{in_proj.weight, conv1d.weight, conv1d.bias, dt_bias, A_log, D, norm.weight,
out_proj.weight}``, ``backbone.norm_f.weight``, ``lm_head.weight``.

transformers' ``Mamba2ForCausalLM`` differs only in the embedding: ``backbone.embeddings.weight``.
(The GGUF table lives beside the GGUF writer.)
"""

from __future__ import annotations

OURS_TO_HF = {"backbone.embedding.weight": "backbone.embeddings.weight"}
HF_TO_OURS = {v: k for k, v in OURS_TO_HF.items()}


def to_hf_name(name: str) -> str:
    return OURS_TO_HF.get(name, name)


def from_hf_name(name: str) -> str:
    return HF_TO_OURS.get(name, name)


def strip_known_prefixes(name: str) -> str:
    """Some savers wrap the model (``_orig_mod.`` from torch.compile, ``module.`` from DDP, ``model.``)."""
    for prefix in ("_orig_mod.", "module.", "model."):
        rest = name[len(prefix):]
        if name.startswith(prefix) and rest.startswith(("backbone.", "lm_head.")):
            return rest
    return name
