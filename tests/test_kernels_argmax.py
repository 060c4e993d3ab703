"""The many-CTA argmax (kernels/triton/argmax.py) against torch.argmax: ties, signs, infinities, NaN, rows."""

import pytest
import torch
from kernels_util import DEVICE

from ssmquant.kernels.triton.argmax import ArgmaxRows


def _check(x):
    am = ArgmaxRows(x.shape[0], x.device)
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for _ in range(3):             # the key and the counter reset themselves
        out.fill_(-1)
        am(x, out)
        assert torch.equal(out, x.argmax(-1)), (out, x.argmax(-1))
    assert int(am.count.sum()) == 0 and bool((am.key == -(2**63)).all())


@pytest.mark.parametrize("N", [7, 4096, 4097, 50288])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_argmax_matches_torch(N, dtype):
    g = torch.Generator().manual_seed(N)
    x = torch.randn(3, N, generator=g).to(dtype)
    x[1] = -x[1].abs() - 1                          # every value negative
    x[2] = torch.round(x[2])                        # many ties: the first maximal index wins
    _check(x.to(DEVICE))


def test_argmax_special_values():
    N = 9000
    rows = torch.full((6, N), -1.0)
    rows[0, [100, 5000, 8999]] = float("inf")                   # first +inf
    rows[1] = float("-inf")                                     # all -inf: index 0
    rows[2, 7000] = float("nan"); rows[2, 10] = float("inf")    # NaN beats +inf, as torch
    rows[3, 4200] = -0.0; rows[3, 4100] = 0.0; rows[3, 4300] = 0.0   # -0.0 == +0.0: the first zero
    rows[4, [4095, 4096]] = 3.0                                 # a tie across two blocks
    rows[5, N - 1] = 2.0
    _check(rows.to(DEVICE))


def test_argmax_rejects_bad_input():
    am = ArgmaxRows(1, DEVICE)
    with pytest.raises(ValueError, match="rows <= 1"):
        am(torch.zeros(2, 8, device=DEVICE), torch.zeros(2, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="int64"):
        am(torch.zeros(1, 8, device=DEVICE), torch.zeros(1, dtype=torch.int32, device=DEVICE))


@pytest.mark.parametrize("rows", [1, 3])
def test_argmax_appends_the_token_and_advances_pos_once(rows):
    """``append``: each row's token also lands in ids[m, pos + 1], and pos moves on by one after every row (the
    decode step's append, done by the argmax's last program); pos and the row counter hold across calls."""
    g = torch.Generator().manual_seed(rows)
    am = ArgmaxRows(rows, DEVICE)
    out = torch.empty(rows, dtype=torch.int64, device=DEVICE)
    ids = torch.zeros(rows, 6, dtype=torch.int64, device=DEVICE)
    pos = torch.tensor(1, dtype=torch.int32, device=DEVICE)
    for call in range(3):
        x = torch.randn(rows, 9000, generator=g).to(DEVICE)
        am(x, out, append=(ids, pos))
        assert torch.equal(out, x.argmax(-1))
        assert torch.equal(ids[:, 2 + call], out) and int(pos) == 2 + call
    assert not ids[:, :2].any() and not ids[:, 5:].any()
    assert int(am.rows_done) == 0 and int(am.count.sum()) == 0
    with pytest.raises(ValueError, match="append"):
        am(x, out, append=(ids.int(), pos))
