"""Fixed-length training batches over a flat token array: deterministic shuffle, exact resume, rank sharding.

Dimension letters: N sequences per epoch, L ``seq_len``, B ``batch_size`` (per rank), W ``world_size``,
G = W * B the global batch.

**Label layout.** Sequence ``i`` is the window ``tokens[i*L : i*L + L + 1]``; its inputs are the first L tokens,
its labels the last L (next-token targets). Windows overlap by one token, so every token but the first is a
label exactly once per epoch and nothing is thrown away between sequences; N = (len(tokens) - 1) // L, and the
tail that does not fill a window is skipped. Sequences run across document boundaries (the EOS marks them), as in
GPT-style packing.

**Order.** The sequences form one endless stream: epoch ``e`` is ``np.random.default_rng([seed, e]).permutation(N)``
and epochs follow each other without a gap, so a global batch may straddle two epochs. Global batch ``g`` is
stream items ``[g*G, (g+1)*G)``, and rank ``r`` takes rows ``[r*B, (r+1)*B)`` of it. Hence the stream of
sequences depends only on (tokens, L, seed), and the sequence of global batches only on G: 1 rank × 8 rows
yields the same global batches as 4 ranks × 2 rows.

**Resume.** The whole iterator state is ``position``, the number of stream items consumed by all ranks together.
``state_dict()`` / ``load_state_dict()`` save and restore it (plus checks that the data and settings match), so
a resumed run yields exactly the batches an uninterrupted run would have. Permutations come from numpy's
``Generator`` (PCG64); resume across numpy versions relies on its stream staying the same, as it has since 1.17.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError


def _windows(tokens: np.ndarray, idx: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), each (len(idx), L) int64, for window indices ``idx``."""
    rows = np.stack([np.asarray(tokens[i * seq_len: i * seq_len + seq_len + 1]) for i in idx.tolist()])
    seqs = torch.from_numpy(rows.astype(np.int64))  # (n, L + 1)
    return seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()


class TokenBatcher:
    """Endless iterator of ``(input_ids, labels)`` LongTensors, each (B, L), for one rank.

    Args:
        tokens: 1-D token array, e.g. ``TokenDataset.train_tokens`` (a memmap is read lazily, row by row).
        seq_len: L, tokens per row.
        batch_size: B, rows per batch on this rank.
        seed: decides the order of every epoch.
        rank, world_size: this rank's slice of each global batch of W * B rows.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0, *,
                 rank: int = 0, world_size: int = 1):
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.global_batch_size = batch_size * world_size
        self.num_sequences = (tokens.shape[0] - 1) // seq_len if tokens.shape[0] else 0
        if self.num_sequences < self.global_batch_size:
            raise DataError(
                f"only {self.num_sequences} sequences of {seq_len}+1 tokens in {tokens.shape[0]:,} training tokens, "
                f"fewer than one global batch ({world_size} x {batch_size}); add data or lower seq_len/batch_size")
        self.position = 0
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    # ---- order --------------------------------------------------------------------------------------------

    def _epoch_perm(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences)
            self._perm_epoch = epoch
        return self._perm

    def stream(self, start: int, count: int) -> np.ndarray:
        """Window indices of stream items ``[start, start + count)``: (count,) int64."""
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            epoch, offset = divmod(start + done, self.num_sequences)
            take = min(count - done, self.num_sequences - offset)
            out[done:done + take] = self._epoch_perm(epoch)[offset:offset + take]
            done += take
        return out

    @property
    def epoch(self) -> int:
        """Epoch of the next stream item (0-based)."""
        return self.position // self.num_sequences

    @property
    def step(self) -> int:
        """Number of global batches yielded so far."""
        return self.position // self.global_batch_size

    # ---- iteration ----------------------------------------------------------------------------------------

    def __iter__(self) -> TokenBatcher:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the next global batch: (input_ids, labels), each (B, L) int64."""
        start = self.position + self.rank * self.batch_size
        batch = _windows(self.tokens, self.stream(start, self.batch_size), self.seq_len)
        self.position += self.global_batch_size
        return batch

    # ---- resume -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain ints, safe for JSON or ``torch.save(weights_only=True)``."""
        return {"position": self.position, "seed": self.seed, "seq_len": self.seq_len,
                "num_sequences": self.num_sequences, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; refuses one made over other data or settings.

        ``world_size`` and ``batch_size`` may differ from the saved run's as long as ``position`` falls on a
        global-batch boundary of this one; with the same global batch size, batches continue exactly.
        """
        for k in ("seed", "seq_len", "num_sequences"):
            if int(state[k]) != getattr(self, k):
                raise DataError(f"cannot resume the data order: saved {k}={state[k]}, now {getattr(self, k)} "
                                "(data, seq_len and seed must match the interrupted run)")
        position = int(state["position"])
        if position % self.global_batch_size:
            raise DataError(f"cannot resume: saved position {position} is not a multiple of the global batch "
                            f"size {self.global_batch_size}")
        self.position = position


def validation_sequences(tokens: np.ndarray, seq_len: int, *,
                         max_sequences: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed held-out sequences for perplexity: (input_ids, labels), each (n, L) int64.

    Same window layout as ``TokenBatcher`` (labels are inputs shifted by one), in order, unshuffled. With
    ``max_sequences``, that many windows spread evenly over the whole validation split.
    """
    n = (tokens.shape[0] - 1) // seq_len if tokens.shape[0] else 0
    if n == 0:
        raise DataError(f"validation split has {tokens.shape[0]} tokens, too few for one sequence of {seq_len}+1; "
                        "raise valid_fraction, add documents or lower seq_len")
    idx = np.arange(n, dtype=np.int64)
    if max_sequences is not None and max_sequences < n:
        idx = np.unique(np.linspace(0, n - 1, max(max_sequences, 1)).round().astype(np.int64))
    return _windows(tokens, idx, seq_len)
