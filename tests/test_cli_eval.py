"""``ssmquant eval``, ``lm-eval`` and ``drift`` end to end on tiny models saved to temporary directories."""

import copy
import json
import math

import pytest
from conftest import tiny_model

from ssmquant.cli import build_parser, main
from ssmquant.cli import eval as cli_eval
from ssmquant.eval.drift import add_weight_noise_
from ssmquant.io.bundled import SAMPLE_HELDOUT
from ssmquant.io.checkpoints import save_model

TEXT = ("The quick brown fox jumps over the lazy dog. State space models scan sequences.\n<|endoftext|>\n"
        "Ternary weights are minus one, zero or plus one. The lazy dog sleeps.\n") * 3


def _parser():
    # The CLI's own parser may not list "eval" yet while SUBCOMMAND_MODULES is edited; register it here too.
    import argparse

    p = argparse.ArgumentParser(prog="ssmquant")
    cli_eval.register(p.add_subparsers(dest="command"))
    return p


@pytest.fixture()
def dirs(tmp_path, tiny_tokenizer):
    teacher = tiny_model(vocab_size=300)
    student = copy.deepcopy(teacher)
    add_weight_noise_(student, 1.0, group_size=64, seed=5)
    save_model(teacher, tmp_path / "teacher", tokenizer=tiny_tokenizer)
    save_model(student, tmp_path / "student", tokenizer=tiny_tokenizer)
    (tmp_path / "text.txt").write_text(TEXT)
    return tmp_path


def _run(argv):
    args = _parser().parse_args(argv)
    args.func(args)


def test_eval_defaults_to_bundled_heldout_sample():
    cfg = cli_eval.eval_config(_parser().parse_args(["eval", "m", "--tasks", "ppl", "--split", "arc_easy=validation"]))
    assert cfg.ppl_source == str(SAMPLE_HELDOUT) and cfg.tasks == "ppl" and cfg.splits == {"arc_easy": "validation"}


def test_eval_ppl_end_to_end(dirs, capsys):
    out = dirs / "eval"
    _run(["eval", str(dirs / "student"), "--teacher", str(dirs / "teacher"), "--tasks", "ppl", "--ppl-source",
          str(dirs / "text.txt"), "--ppl-context", "32", "--ppl-stride", "16", "--device", "cpu", "--out", str(out),
          "--no-progress"])
    res = json.loads((out / "results.json").read_text())
    for who in ("student", "teacher"):
        assert math.isfinite(res[who]["perplexity"]["ppl"]) and res[who]["perplexity"]["n_tokens"] > 100
    assert res["student"]["perplexity"]["ppl"] != res["teacher"]["perplexity"]["ppl"]
    assert json.loads((out / "eval_config.json").read_text())["ppl_context"] == 32
    assert "ppl" in capsys.readouterr().out.lower()


@pytest.mark.parametrize("argv, msg", [(["--split", "arc_easy"], "TASK=SPLIT"),
                                       (["--ppl-stride", "64", "--ppl-context", "32"], "--ppl-stride"),
                                       (["--tasks", "nosuchtask"], "unknown task")])
def test_eval_user_errors_are_one_line(argv, msg, tmp_path, capsys):
    assert main(["eval", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_drift_end_to_end(dirs, capsys):
    out = dirs / "drift"
    _run(["drift", "--teacher", str(dirs / "teacher"), "--student", str(dirs / "student"), "--text",
          str(dirs / "text.txt"), "--max-len", "24", "--n-seqs", "2", "--posthoc-group-size", "64",
          "--noise-group-size", "64", "--noise-scale", "1", "--state-noise", "0.01", "--state-noise-every", "4",
          "--positions-per-bucket", "3", "--device", "cpu", "--out", str(out)])
    res = json.loads((out / "drift.json").read_text())
    assert set(res["models"]) == {"student", "ptq-g64", "wnoise=1", "snoise=0.01"}
    assert res["buckets"] == [[1, 16], [17, 24]] and res["n_seqs"] == 2 and res["seq_len"] == 24
    for name in ("student", "ptq-g64", "wnoise=1", "snoise=0.01"):
        assert all(v > 0 for row in res["models"][name]["state"]["per_bucket"] for v in row), name
    assert (out / "drift.png").stat().st_size > 1000 and (out / "drift_config.json").exists()
    table = capsys.readouterr().out
    assert "1-16" in table and "17-24" in table and "student" in table


def test_drift_bad_text_is_one_line(tmp_path, capsys):
    assert main(["drift", "--text", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_lm_eval_passes_arguments_through(monkeypatch):
    pytest.importorskip("lm_eval")
    from ssmquant.eval import lmeval

    seen = []
    monkeypatch.setattr(lmeval, "run_lm_eval_cli", seen.append)
    argv = ["--model", "ssmquant", "--model_args", "pretrained=DIR", "--tasks", "hellaswag", "--limit", "50", "-v"]
    _run(["lm-eval", *argv])
    assert seen == [argv]


def test_lm_eval_help_is_ours(capsys):
    with pytest.raises(SystemExit) as e:
        _run(["lm-eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: ssmquant lm-eval" in out and "--model ssmquant --model_args pretrained=" in out


def test_eval_commands_registered_with_help():
    names = {"eval", "lm-eval", "drift"}
    sub = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert names <= set(sub.choices)
    for name in names:
        p = sub.choices[name]
        assert "example" in p.format_help().lower()
        assert all(a.help for a in p._actions if a.option_strings and a.dest != "help"), name
    full = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    if "eval" in full.choices:  # once SUBCOMMAND_MODULES lists the module
        assert names <= set(full.choices)
