"""evaluate(): a student and a teacher on local JSONL tasks and a text, with files written."""

from __future__ import annotations

import json

import torch

from ssmquant.eval import evaluate, format_table
from test_eval_tasks import DOCS, rigged_model
from test_eval_toys import CharTokenizer


def test_evaluate_with_teacher_writes_report(tmp_path):
    tok = CharTokenizer()
    data = tmp_path / "data"
    data.mkdir()
    for task in ("piqa", "winogrande", "lambada_openai"):
        (data / f"{task}.jsonl").write_text(json.dumps(DOCS[task]) + "\n" + json.dumps(DOCS[task]) + "\n")
    text = tmp_path / "text.txt"
    text.write_text("zz zz zz the end. " * 10)
    student = rigged_model(tok)
    teacher = rigged_model(tok)
    teacher.table.data.mul_(0.0)  # uniform teacher: chance-level
    res = evaluate(student, tok, tasks=["piqa", "winogrande", "lambada_openai", "ppl"], teacher=teacher,
                   data_dir=data, out_dir=tmp_path / "out", ppl_source=text, ppl_context=16, ppl_stride=8,
                   n_boot=100, progress=False, batch_size=3)
    assert res["tasks"] == ["piqa", "winogrande", "lambada_openai"]
    assert res["student"]["tasks"]["piqa"]["metrics"]["acc"]["value"] == 1.0
    assert abs(res["teacher"]["perplexity"]["ppl"] - student.table.shape[1]) < 1e-3
    assert res["suite"]["mean"] == 1.0 and res["suite"]["diff"]["mean"] > 0
    assert "acc" in res["diff"]["tasks"]["piqa"]
    for name in ("results.json", "items.json", "results.txt", "results.png"):
        assert (tmp_path / "out" / name).is_file(), name
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "items" not in saved["student"]["tasks"]["piqa"]
    table = format_table(res)
    assert "winogrande" in table and "teacher" in table and "average" in table and "perplexity" in table
    torch.testing.assert_close(student.table, rigged_model(tok).table)  # evaluation does not modify the model
