"""Ternary QAT: codes/scales on hand-computed examples, STE and LSQ gradients, config errors, fake-quant == packed
bit for bit, scale modes, collapse detection and guards, state-dict round trips, and the no-bypass check.

The toy model mirrors the Mamba-2 module names (``backbone.embedding``, ``backbone.layers.N.mixer.in_proj`` /
``out_proj``, tied ``lm_head``) so the default include patterns and the tie handling are exercised for real.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssmquant.errors import ConfigError
from ssmquant.quant import (
    SCALE_FLOOR,
    MonitorConfig,
    PackedTernaryLinear,
    QuantConfig,
    TernaryEmbedding,
    TernaryLinear,
    ZeroRatioMonitor,
    config_dict,
    convert,
    dequantize_ternary,
    find_bypassed_modules,
    quant_param_groups,
    quantize_,
    ternary_codes_and_scales,
    ternary_fake_quant,
    ternary_fake_quant_ref,
    ternary_modules,
)
from ssmquant.quant.monitor import group_zero_fraction
from ssmquant.quant.ternary import lsq_grad_scale, round_scale


def _diff(a, b) -> str:
    d = (a.float() - b.float()).abs()
    return f"max diff {d.max().item():.3e}, mean diff {d.mean().item():.3e}"


class ToyMixer(nn.Module):
    def __init__(self, d: int, e: int):
        super().__init__()
        self.in_proj = nn.Linear(d, 2 * e, bias=False)
        self.out_proj = nn.Linear(e, d, bias=False)

    def forward(self, x):
        z, h = self.in_proj(x).chunk(2, dim=-1)
        return self.out_proj(h * F.silu(z))


class ToyBlock(nn.Module):
    def __init__(self, d: int, e: int):
        super().__init__()
        self.mixer = ToyMixer(d, e)


class ToyBackbone(nn.Module):
    def __init__(self, vocab: int, d: int, e: int, n_layer: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(ToyBlock(d, e) for _ in range(n_layer))


class ToyLM(nn.Module):
    """ids (b, l) -> logits (b, l, vocab); the last 4 vocabulary rows are zero padding (all-zero groups)."""

    def __init__(self, vocab: int = 36, d: int = 64, e: int = 128, n_layer: int = 2, tie: bool = True):
        super().__init__()
        self.backbone = ToyBackbone(vocab, d, e, n_layer)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        with torch.no_grad():
            self.backbone.embedding.weight[-4:] = 0
        if tie:
            self.lm_head.weight = self.backbone.embedding.weight

    def forward(self, ids):
        h = self.backbone.embedding(ids)
        for layer in self.backbone.layers:
            h = h + layer.mixer(h)
        return self.lm_head(h)


def _toy(seed: int = 0, **kw) -> ToyLM:
    torch.manual_seed(seed)
    return ToyLM(**kw)


def _ids(seed: int = 1):
    return torch.randint(0, 36, (2, 7), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- codes and scales


def test_codes_and_scales_hand_computed():
    w = torch.tensor([[0.3, -0.1, 0.8, -0.6, 0.0, 0.0, 0.0, 0.0],
                      [0.02, -0.02, 0.05, 0.01, 1.0, -1.0, 0.2, 0.6]])
    codes, scale = ternary_codes_and_scales(w, 4)
    # absmean: 0.45 | 0 (floored) ; 0.025 | 0.7. fp16 rounding applies before the codes are computed.
    expected_scale = torch.tensor([[0.45, SCALE_FLOOR], [0.025, 0.7]]).half()
    assert scale.dtype == torch.float16 and torch.equal(scale, expected_scale)
    # 0.3/0.45=0.67->1, -0.1/0.45->0, 0.8/0.45=1.8->1 (clamped), -0.6/0.45=-1.3->-1; zero group -> 0
    # 0.8->1, -0.8->-1, 2->1, 0.4->0 ; 1.43->1, -1.43->-1, 0.29->0, 0.86->1
    expected = torch.tensor([[1, 0, 1, -1, 0, 0, 0, 0], [1, -1, 1, 0, 1, -1, 0, 1]], dtype=torch.int8)
    assert codes.dtype == torch.int8 and torch.equal(codes, expected)
    # The floor is exact in fp16, and the all-zero group dequantizes to exact zeros.
    assert scale[0, 1].item() == SCALE_FLOOR
    assert torch.equal(dequantize_ternary(codes, scale, 4)[0, 4:], torch.zeros(4))


def test_given_scale_is_rounded_to_storage_dtype_before_coding():
    s32 = torch.tensor([[1.5003]])  # fp16 -> 1.5
    w = torch.tensor([[0.7501, 0.0]])  # 0.7501 / 1.5 > 0.5 -> code 1, but 0.7501 / 1.5003 < 0.5 -> code 0
    codes, scale = ternary_codes_and_scales(w, 2, s32)
    assert scale.item() == 1.5 and codes.tolist() == [[1, 0]], "codes must use the fp16-rounded scale"
    codes32, scale32 = ternary_codes_and_scales(w, 2, s32, scale_dtype=torch.float32)
    assert scale32.dtype == torch.float32 and codes32.tolist() == [[0, 0]]


# ---------------------------------------------------------------- gradients


def test_ste_weight_gradient_is_identity():
    torch.manual_seed(0)
    w = torch.randn(8, 64, requires_grad=True)
    s = round_scale(torch.rand(8, 2) + 0.5, torch.float16).requires_grad_()
    w_q = ternary_fake_quant(w, s, 32)
    w_q.retain_grad()
    x = torch.randn(5, 64)
    (F.linear(x, w_q) ** 2).sum().backward()
    assert torch.equal(w.grad, w_q.grad)


def test_lsq_scale_gradient_hand_computed():
    w = torch.tensor([[0.1, -0.6, 1.5, 0.4]])
    s = torch.tensor([[0.5]], requires_grad=True)  # exact in fp16
    upstream = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # v = 0.2, -1.2, 3, 0.8 ; codes 0, -1, 1, 1 ; in range -> round(v) - v, out of range -> code:
    # 1*(0-0.2) + 2*(-1) + 3*(1) + 4*(1-0.8) = 1.6
    w_q = ternary_fake_quant(w, s, 4, grad_scale=1.0)
    assert torch.equal(w_q, torch.tensor([[0.0, -0.5, 0.5, 0.5]]))
    (w_q * upstream).sum().backward()
    torch.testing.assert_close(s.grad, torch.tensor([[1.6]]))
    s.grad = None
    (ternary_fake_quant(w, s, 4, grad_scale=lsq_grad_scale(4)) * upstream).sum().backward()
    torch.testing.assert_close(s.grad, torch.tensor([[0.8]]))  # * 1/sqrt(4 * 1)


def test_fake_quant_matches_plain_autograd_reference():
    # LSQ's scale gradient is an estimator, not a derivative (the forward is piecewise code*s, whose derivative is
    # the code), so finite differences cannot check it. The honest check is against the same estimator written as
    # plain autograd over round-with-detached-residual, which is how the LSQ paper defines it.
    torch.manual_seed(0)
    w = (torch.randn(16, 128) * 0.05).requires_grad_()
    s_param = (torch.rand(16, 4) * 0.06 + 0.01).requires_grad_()
    x = torch.randn(3, 128)
    g = lsq_grad_scale(32)

    w_q = ternary_fake_quant(w, round_scale(s_param, torch.float16), 32, grad_scale=g)
    (F.linear(x, w_q) ** 2).sum().backward()
    grads = (w.grad.clone(), s_param.grad.clone())
    w.grad = s_param.grad = None
    w_ref = ternary_fake_quant_ref(w, round_scale(s_param, torch.float16), 32, grad_scale=g)
    torch.testing.assert_close(w_q, w_ref, rtol=0, atol=1e-7, msg=lambda m: f"forward vs ref: {m}")
    (F.linear(x, w_ref) ** 2).sum().backward()
    torch.testing.assert_close(grads[0], w.grad, msg=lambda m: f"weight grad vs ref: {m}")
    torch.testing.assert_close(grads[1], s_param.grad, msg=lambda m: f"scale grad vs ref: {m}")


def test_fixed_and_ema_modes_give_no_scale_gradient():
    for mode in ("fixed", "ema"):
        m = TernaryLinear(torch.randn(4, 64), group_size=32, scale_mode=mode)
        m(torch.randn(2, 64)).sum().backward()
        assert m.weight.grad is not None and not any(p is m.scale for p in m.parameters())


# ---------------------------------------------------------------- config and swapping


def test_group_size_not_dividing_in_features_names_module_and_sizes():
    model = nn.Sequential()
    model.add_module("mixer", ToyMixer(96, 64))  # in_proj in=96, out_proj in=64
    with pytest.raises(ConfigError) as err:
        quantize_(model, QuantConfig(group_size=64))
    msg = str(err.value)
    assert "mixer.in_proj" in msg and "96" in msg and "64" in msg and "[32]" in msg and "'row'" in msg
    assert isinstance(model.mixer.out_proj, nn.Linear), "nothing may be swapped when a module fails the check"
    quantize_(model, QuantConfig(group_size="row"))
    assert model.mixer.in_proj.group_size == 96 and model.mixer.out_proj.group_size == 64


@pytest.mark.parametrize("kwargs", [dict(group_size=48), dict(scale_mode="lsq"), dict(scale_dtype="int8"),
                                    dict(ema_decay=1.0), dict(include=()), dict(include=("(",)),
                                    dict(scale_floor=1e-9)])
def test_config_validation(kwargs):
    with pytest.raises(ConfigError):
        QuantConfig(**kwargs)


def test_no_match_is_an_error():
    with pytest.raises(ConfigError, match="no module matches"):
        quantize_(_toy(), QuantConfig(include=(r"\.x_proj$",)))


def test_default_patterns_swap_projections_only():
    model = quantize_(_toy(), QuantConfig(group_size=64))
    names = sorted(n for n, _ in ternary_modules(model))
    assert names == [f"backbone.layers.{i}.mixer.{p}" for i in range(2) for p in ("in_proj", "out_proj")]
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.backbone.embedding.weight
    assert all(m.weight.dtype == torch.float32 for _, m in ternary_modules(model))
    assert config_dict(QuantConfig())["include"] == [r"\.in_proj$", r"\.out_proj$"]


def test_tied_lm_head_is_untied_with_a_warning():
    model = _toy()
    before = model.lm_head.weight.detach().clone()
    with pytest.warns(UserWarning, match="untying lm_head.weight"):
        quantize_(model, QuantConfig(group_size=64, include=(r"^lm_head$",)))
    assert isinstance(model.lm_head, TernaryLinear)
    assert model.lm_head.weight is not model.backbone.embedding.weight
    assert torch.equal(model.lm_head.weight, before)
    with pytest.warns(UserWarning, match="untying backbone.embedding.weight"):
        quantize_(_toy(), QuantConfig(group_size=64, include=(r"embedding$",)))


def test_filter_fn_and_exclude():
    config = QuantConfig(group_size=64, exclude=(r"layers\.1\.",))
    model = quantize_(_toy(), config, filter_fn=lambda m, n: "in_proj" in n)
    assert [n for n, _ in ternary_modules(model)] == ["backbone.layers.0.mixer.in_proj"]


# ---------------------------------------------------------------- convert: bit exactness


@pytest.mark.parametrize("mode,group_size,scale_dtype", [
    ("fixed", 32, "float16"), ("learnable", 32, "float16"), ("ema", 32, "float16"), ("learnable", "row", "float16"),
    ("fixed", "row", "bfloat16"),
    # With fp16 scales, `w + (w_q - w)` happens to be exact in fp32 (w_q has few significant bits); fp32 scales
    # make this test catch an STE written that way.
    ("learnable", 64, "float32"),
])
def test_convert_equals_fake_quant_bit_for_bit(mode, group_size, scale_dtype):
    include = (r"\.in_proj$", r"\.out_proj$", r"^lm_head$", r"embedding$")
    config = QuantConfig(group_size=group_size, scale_mode=mode, scale_dtype=scale_dtype, include=include)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = quantize_(_toy(), config)
    with torch.no_grad():
        for _, m in ternary_modules(model):
            # Heavy tails (|w| >> s, as with LLM outliers) are where `w + (w_q - w).detach()` stops being w_q.
            m.weight.mul_(torch.randn_like(m.weight).mul(1.5).exp())
            if m.scale is not None:  # move scales off their init so the stored scale really is the state
                m.scale.mul_(torch.rand_like(m.scale) + 0.5)
    model.eval()
    ids = _ids()
    fake = {n: m.fake_quant_weight().detach() for n, m in ternary_modules(model)}
    with torch.no_grad():
        logits = model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits_bf16 = model(ids)
    convert(model)
    assert not list(ternary_modules(model))
    for name, w in fake.items():
        packed = model.get_submodule(name)
        assert packed.codes.dtype == torch.int8 and packed.scale.dtype == config.torch_scale_dtype
        assert set(packed.codes.unique().tolist()) <= {-1, 0, 1}
        assert torch.equal(packed.weight_dequantized(), w), f"{name}: {_diff(packed.weight_dequantized(), w)}"
    with torch.no_grad():
        after = model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            after_bf16 = model(ids)
    assert torch.equal(after, logits), _diff(after, logits)
    assert torch.equal(after_bf16, logits_bf16), _diff(after_bf16, logits_bf16)


def test_all_zero_group_survives_convert():
    m = TernaryLinear(torch.zeros(3, 64), group_size=32, scale_mode="learnable")
    with torch.no_grad():
        m.scale.zero_()  # a learnable scale driven to zero is floored too
    w = m.fake_quant_weight()
    assert torch.equal(w, torch.zeros(3, 64)) and torch.isfinite(w).all()
    packed = PackedTernaryLinear.from_ternary(m)
    assert torch.equal(packed.scale, torch.full((3, 2), SCALE_FLOOR, dtype=torch.float16))
    assert torch.equal(packed.weight_dequantized(), w)


# ---------------------------------------------------------------- scale modes


def test_fixed_mode_recomputes_from_latent_weights():
    m = TernaryLinear(torch.randn(4, 64), group_size=32, scale_mode="fixed")
    with torch.no_grad():
        m.weight.mul_(3.0)
    expected = m.weight.abs().reshape(4, 2, 32).mean(-1).half().float()
    assert torch.equal(m.effective_scale(), expected)


def test_ema_updates_only_in_train_mode():
    m = TernaryLinear(torch.randn(4, 64), group_size=32, scale_mode="ema", ema_decay=0.9)
    s0 = m.scale.clone()
    with torch.no_grad():
        m.weight.mul_(2.0)
    m.eval()
    m(torch.randn(2, 64))
    assert torch.equal(m.scale, s0)
    m.train()
    m(torch.randn(2, 64))
    torch.testing.assert_close(m.scale, 0.9 * s0 + 0.1 * (2.0 * s0))
    m.codes_and_scale()  # reading state never updates it
    torch.testing.assert_close(m.scale, 0.9 * s0 + 0.1 * (2.0 * s0))


def test_learnable_scale_trains_in_its_own_param_group():
    model = quantize_(_toy(), QuantConfig(scale_mode="learnable", group_size=64))
    groups = quant_param_groups(model, lr=1e-3, weight_decay=0.1, scale_lr=1e-2)
    assert [g["name"] for g in groups] == ["weights", "ternary_scales"]
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lr"] == 1e-2 and len(groups[1]["params"]) == 4
    n_params = sum(1 for p in model.parameters())
    assert sum(len(g["params"]) for g in groups) == n_params
    opt = torch.optim.AdamW(groups)
    before = [m.scale.detach().clone() for _, m in ternary_modules(model)]
    F.cross_entropy(model(_ids()).flatten(0, 1), _ids(2).flatten()).backward()
    opt.step()
    assert all(not torch.equal(b, m.scale) for b, (_, m) in zip(before, ternary_modules(model)))


# ---------------------------------------------------------------- no bypass


def test_every_quantized_module_reaches_the_loss():
    model = quantize_(_toy(), QuantConfig(group_size=64, scale_mode="learnable")).eval()
    ids, targets = _ids(), _ids(2)

    def loss():
        return F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())

    assert find_bypassed_modules(model, loss) == []

    class Bypassing(nn.Module):  # reads out_proj.weight raw, as fused training kernels do
        def __init__(self):
            super().__init__()
            self.mixer = ToyMixer(64, 64)

        def forward(self, x):
            z, h = self.mixer.in_proj(x).chunk(2, dim=-1)
            return F.linear(h * F.silu(z), self.mixer.out_proj.weight)

    bad = quantize_(Bypassing(), QuantConfig(group_size=64)).eval()
    x = torch.randn(2, 64)
    assert find_bypassed_modules(bad, lambda: bad(x).square().mean()) == ["mixer.out_proj"]


# ---------------------------------------------------------------- state dict


@pytest.mark.parametrize("mode", ["learnable", "ema"])
def test_state_dict_round_trip(mode, tmp_path):
    config = QuantConfig(group_size=64, scale_mode=mode)
    model = quantize_(_toy(), config)
    with torch.no_grad():
        for _, m in ternary_modules(model):
            m.scale.mul_(1.3)
    path = tmp_path / "prepared.pt"
    torch.save(model.state_dict(), path)
    fresh = quantize_(_toy(seed=5), config)
    fresh.load_state_dict(torch.load(path))
    model.eval(), fresh.eval()
    assert torch.equal(fresh(_ids()), model(_ids()))

    convert(model)
    torch.save(model.state_dict(), tmp_path / "packed.pt")
    packed = convert(quantize_(_toy(seed=5), config))
    packed.load_state_dict(torch.load(tmp_path / "packed.pt"))
    assert torch.equal(packed(_ids()), fresh(_ids()))


# ---------------------------------------------------------------- monitor


def _drifting_run(policies, steps=30, growth=1.08, **cfg):
    """Scales grow 8% per step (a stand-in for a collapsing LSQ run); returns (monitor, zero fractions per step)."""
    model = quantize_(_toy(), QuantConfig(group_size=32, scale_mode="learnable"))
    monitor = ZeroRatioMonitor(MonitorConfig(every_n_steps=1, max_zero_frac=0.6, max_rise_per_kstep=1e9,
                                             policies=policies, **cfg))
    zero_fracs = []
    for step in range(steps):
        with torch.no_grad():
            for _, m in ternary_modules(model):
                m.scale.mul_(growth)
        monitor.step(model, step)
        monitor.apply_policy(model, step)
        zero_fracs.append(max(group_zero_fraction(m).mean().item() for _, m in ternary_modules(model)))
    return monitor, zero_fracs


def test_collapse_is_detected_and_clamp_or_reinit_stop_it(caplog):
    with caplog.at_level(logging.WARNING, logger="ssmquant.quant.monitor"):
        monitor, zf = _drifting_run(("warn",))
    assert zf[-1] > 0.8 and monitor.events and {e.reason for e in monitor.events} == {"zero_frac"}
    assert "may be collapsing" in caplog.text

    monitor, zf = _drifting_run(("clamp",), clamp_range=(0.5, 1.5))
    assert max(zf) < 0.6 and not monitor.events, zf

    monitor, zf = _drifting_run(("reinit",))
    assert monitor.events, "the drift must still be detected"
    assert max(zf) <= 0.6, zf  # measured after apply_policy: every detected collapse was undone


def test_rising_trend_is_detected():
    model = quantize_(_toy(), QuantConfig(group_size=32, scale_mode="learnable"))
    monitor = ZeroRatioMonitor(MonitorConfig(every_n_steps=10, window=3, max_rise_per_kstep=1.0))
    for step in range(0, 40, 10):
        metrics = monitor.step(model, step)
        assert "quant/zero_frac" in metrics and "quant/scale_ratio/backbone.layers.0.mixer.in_proj" in metrics
        with torch.no_grad():
            for _, m in ternary_modules(model):
                m.scale.mul_(1.05)
    assert monitor.step(model, 41) == {}
    assert {e.reason for e in monitor.events} == {"rising"}
    assert metrics["quant/zero_frac_rise_per_kstep_max"] > 1.0


def test_regularize_penalty_pushes_zero_fraction_down():
    model = quantize_(_toy(), QuantConfig(group_size=32, scale_mode="learnable"))
    assert ZeroRatioMonitor(MonitorConfig()).penalty(model) is None
    monitor = ZeroRatioMonitor(MonitorConfig(policies=("regularize",), penalty_target=0.4, penalty_max_rows=64))
    assert monitor.penalty(model).item() == 0.0  # ~31% zeros at absmean: below target, no penalty
    with torch.no_grad():
        for _, m in ternary_modules(model):
            m.scale.mul_(3.0)
    zf0 = monitor.measure(model)
    opt = torch.optim.Adam([m.scale for _, m in ternary_modules(model)], lr=0.01)
    for _ in range(40):
        opt.zero_grad()
        penalty = monitor.penalty(model)
        penalty.backward()
        opt.step()
    zf1 = monitor.measure(model)
    assert all(zf1[n][0] < zf0[n][0] - 0.2 for n in zf0), (zf0, zf1)


def test_freeze_policy_toggles_scale_gradients():
    model = quantize_(_toy(), QuantConfig(group_size=32, scale_mode="learnable"))
    monitor = ZeroRatioMonitor(MonitorConfig(policies=("freeze",), freeze_steps=5))
    monitor.apply_policy(model, 0)
    assert all(not m.scale.requires_grad for _, m in ternary_modules(model))
    model(_ids()).sum().backward()
    assert all(m.scale.grad is None and m.weight.grad is not None for _, m in ternary_modules(model))
    monitor.apply_policy(model, 5)
    assert all(m.scale.requires_grad for _, m in ternary_modules(model))


@pytest.mark.parametrize("kwargs", [dict(policies=("panic",)), dict(window=1), dict(clamp_range=(1.2, 2.0)),
                                    dict(policies=("freeze",))])
def test_monitor_config_validation(kwargs):
    with pytest.raises(ConfigError):
        MonitorConfig(**kwargs)


def test_embedding_is_quantized_by_pattern():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = quantize_(_toy(), QuantConfig(group_size=32, include=(r"embedding$",)))
    emb = model.backbone.embedding
    assert isinstance(emb, TernaryEmbedding)
    ids = _ids()
    torch.testing.assert_close(emb(ids), F.embedding(ids, emb.fake_quant_weight()), rtol=0, atol=0)
