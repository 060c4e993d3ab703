"""Decode cache: per layer, the conv window and the SSM state.

conv_states[i]: (b, conv_dim, d_conv), the last d_conv pre-activation inputs of the depthwise conv, oldest first
(mamba-ssm's layout), in the model dtype. ssm_states[i]: (b, nheads, headdim, d_state) in fp32: the state is
precision-sensitive (errors accumulate through the recurrence), so it never drops to 16 bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import Mamba2Config


@dataclass
class InferenceCache:
    conv_states: list[torch.Tensor] = field(default_factory=list)
    ssm_states: list[torch.Tensor] = field(default_factory=list)
    seqlen_offset: int = 0

    @classmethod
    def allocate(cls, cfg: Mamba2Config, batch_size: int, *, device=None, dtype=torch.float32) -> "InferenceCache":
        conv = [torch.zeros(batch_size, cfg.conv_dim, cfg.d_conv, device=device, dtype=dtype)
                for _ in range(cfg.n_layer)]
        ssm = [torch.zeros(batch_size, cfg.nheads, cfg.headdim, cfg.d_state, device=device, dtype=torch.float32)
               for _ in range(cfg.n_layer)]
        return cls(conv, ssm, 0)

    def reset(self) -> None:
        for t in self.conv_states + self.ssm_states:
            t.zero_()
        self.seqlen_offset = 0
