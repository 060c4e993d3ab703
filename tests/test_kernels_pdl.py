"""The programmatic-dependent-launch policy (kernels/pdl.py): modes, the environment switch, bad values."""

import pytest
import torch

from ssmquant.kernels import pdl


def test_resolve_modes(monkeypatch):
    monkeypatch.delenv("SSMQUANT_PDL", raising=False)
    assert pdl.resolve(False) is False
    assert pdl.resolve("after") == "after"
    assert pdl.resolve("early") == "early"
    assert pdl.resolve(True) == "after" and pdl.resolve(True, "mma") == "early" and pdl.resolve(True, "ssm") == "after"
    monkeypatch.setenv("SSMQUANT_PDL", "early")
    assert pdl.resolve(True) == "early" and pdl.resolve(True, "mma") == "early"
    monkeypatch.setenv("SSMQUANT_PDL", "after")
    assert pdl.resolve(True, "mma") == "after"
    with pytest.raises(ValueError, match="kernel="):
        pdl.resolve(True, "gemm")
    with pytest.raises(ValueError, match="pdl='sometimes'"):
        pdl.resolve("sometimes")


def test_pdl_mode_off_without_hopper_or_when_switched_off(monkeypatch):
    monkeypatch.setenv("SSMQUANT_PDL", "0")
    assert pdl.pdl_mode() is False
    monkeypatch.setenv("SSMQUANT_PDL", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert pdl.pdl_mode() is False
    monkeypatch.delenv("TRITON_INTERPRET")
    hopper = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
    assert pdl.pdl_mode() == ("after" if hopper else False)
    assert pdl.pdl_mode("mma") == ("early" if hopper else False)
    monkeypatch.setenv("SSMQUANT_PDL", "early")
    assert pdl.pdl_mode() == ("early" if hopper else False)


def test_fast_decoder_takes_the_mode(monkeypatch):
    """FastDecoder(gemv_configs={"pdl": ...}) validates the mode; off the GPU (interpreter) PDL is off."""
    from conftest import tiny_model

    from ssmquant.kernels.fast_decode import FastDecoder

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    m = tiny_model(seed=1, d_model=32, n_layer=1, d_state=16, headdim=16)
    assert FastDecoder(m, 1, 2, gemv_configs={"pdl": "early"}).pdl is False
    with pytest.raises(ValueError, match="pdl='sometimes'"):
        FastDecoder(m, 1, 2, gemv_configs={"pdl": "sometimes"})
