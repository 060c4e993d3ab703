"""Name tables between our parameter names (mamba-ssm's) and other layouts.

Ours = mamba-ssm: ``backbone.embedding.weight``, ``backbone.layers.N.norm.weight``,
``backbone.layers.N.mixer.{in_proj.weight, conv1d.weight, conv1d.bias, dt_bias, A_log, D, norm.weight,
out_proj.weight}``, ``backbone.norm_f.weight``, ``lm_head.weight``.

transformers' ``Mamba2ForCausalLM`` differs only in the embedding: ``backbone.embeddings.weight``.
(The GGUF table lives beside the GGUF writer.)
"""

from __future__ import annotations

# Only the embedding's module name differs; mapping the prefix covers its extra tensors in packed formats too
# (``backbone.embedding.weight_int8`` <-> ``backbone.embeddings.weight_int8``).
_OURS_EMB, _HF_EMB = "backbone.embedding.", "backbone.embeddings."


def to_hf_name(name: str) -> str:
    return _HF_EMB + name[len(_OURS_EMB):] if name.startswith(_OURS_EMB) else name


def from_hf_name(name: str) -> str:
    return _OURS_EMB + name[len(_HF_EMB):] if name.startswith(_HF_EMB) else name


def strip_known_prefixes(name: str) -> str:
    """Some savers wrap the model (``_orig_mod.`` from torch.compile, ``module.`` from DDP, ``model.``)."""
    for prefix in ("_orig_mod.", "module.", "model."):
        rest = name[len(prefix):]
        if name.startswith(prefix) and rest.startswith(("backbone.", "lm_head.")):
            return rest
    return name
