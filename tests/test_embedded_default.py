"""The main job with no arguments: the bundled teacher distilled on a 2-core CPU in minutes, and good enough.

This runs the real default (about 2 minutes on the 2-core CI machine): a default that misses these bounds is a bug.
"""

import json
import time

from ssmquant.cli import main


def test_embedded_default_distill(tmp_path, capsys):
    t0 = time.time()
    assert main(["distill", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    wall = time.time() - t0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    out = capsys.readouterr().out
    assert "QAT + KD student" in out and "post-hoc (no KD)" in out and "paper way" in out
    assert s["student_ppl"] < s["post_hoc_ppl"], s
    assert s["student_ppl"] <= 1.5 * s["teacher_ppl"], s
    assert wall < 300, f"the embedded default took {wall:.0f} s (> 5 minutes)"
    assert (tmp_path / "run" / "plots" / "zero_frac.png").exists()
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["quantization_config"]
