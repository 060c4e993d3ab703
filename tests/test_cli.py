"""The command line: subcommands, --help for each, one-line errors without tracebacks, --debug."""

import subprocess
import sys

import pytest

from ssmquant.cli import build_parser, main
from ssmquant.io.checkpoints import save_model

from conftest import tiny_model


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(action.choices)


@pytest.mark.parametrize("cmd", _subcommands())
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: ssmquant" in out and "example" in out.lower()
    # Every flag carries help text.
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[cmd]
    for act in sub._actions:
        if act.option_strings and act.dest != "help":
            assert act.help, f"{cmd} {act.option_strings} has no help"


def test_info(tmp_path, capsys):
    save_model(tiny_model(), tmp_path)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    n = tiny_model().num_parameters()
    assert f"{n:,}" in out and "float32" in out


def test_generate_streams(tmp_path, capsys, tiny_tokenizer):
    save_model(tiny_model(vocab_size=300, pad_vocab_size_multiple=16), tmp_path, tokenizer=tiny_tokenizer)
    assert main(["generate", str(tmp_path), "--prompt", "The quick", "--max-new-tokens", "8", "--seed", "1",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The quick") and len(out) > len("The quick\n")


def test_user_error_is_one_line_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ssmquant", "info", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such directory" in lines[0] and "Traceback" not in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ssmquant", "--debug", "info", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_tokenizer_model_mismatch(tmp_path, tiny_tokenizer, capsys):
    save_model(tiny_model(vocab_size=50, pad_vocab_size_multiple=1), tmp_path, tokenizer=tiny_tokenizer)
    code = main(["generate", str(tmp_path), "--prompt", "zzqq the lazy dog jumps", "--device", "cpu"])
    assert code == 2 and "does not belong to this model" in capsys.readouterr().err
