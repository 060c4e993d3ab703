"""The Transformer control and the larger teacher in the replication study (issue 10, docs/RESULTS.md).

Same protocol as ``scripts/study_small.py`` (held-out perplexity on the first 16,384 tokens of the bundled held-out
sample, windows 512 / stride 512, fp32; distillation with the embedded default's settings), applied to any teacher:

    T=study/transformer-control/model          # the Transformer control (3.93M)
    M=src/ssmquant/assets/teacher              # the bundled Mamba-2 teacher (3.83M)
    python scripts/study_control.py ptq     --teacher $T --tag transformer        # post-hoc methods, group 256
    python scripts/study_control.py ptq     --teacher $M --tag mamba
    python scripts/study_control.py ablate  --teacher $T --tag transformer        # RTN of one kind of projection
    python scripts/study_control.py distill --teacher $T --tag transformer --seeds 0 1 2 --tokens 100K
    python scripts/study_control.py lens    --teacher $T --tag transformer --student runs/study/...
    python scripts/study_control.py position --teacher $T --tag transformer --student runs/study/...
    python scripts/study_control.py table   # markdown tables from runs/study/control.jsonl
    python scripts/study_control.py plot    # docs/img/study_lens.png, docs/img/study_position.png

Every run appends a JSON line (experiment, tag, name, command, seed, wall time, device, numbers) to
``OUT/control.jsonl``; a run whose output exists is read back instead of run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPORT_TOKENS = 16384
EMBEDDED_FLAGS = ["--group-size", "256", "--seq-len", "256", "--micro-batch", "8", "--lr", "2e-3", "--warmup-frac",
                  "0.05", "--report-tokens", str(REPORT_TOKENS), "--eval-sequences", "8", "--log-every", "5"]
PTQ_METHODS = {  # name -> ssmquant ptq flags (docs/ptq_dfssm.md's commands at group 256)
    "rtn": ["--method", "rtn"],
    "rtn-search": ["--method", "rtn-search"],
    "js-shrink": ["--method", "js-shrink"],
    "gptq": ["--method", "gptq", "--calib-seqs", "128", "--calib-len", "256"],
    "gptq-qep0.5": ["--method", "gptq", "--calib-seqs", "128", "--calib-len", "256", "--qep-alpha", "0.5"],
    "lrec32": ["--method", "lrec", "--rank", "32"],
    "hg-gsq": ["--method", "hg-gsq", "--calib-seqs", "128", "--calib-len", "256"],
}
ABLATE = {  # which projections RTN quantizes (the Transformer's names; Mamba has only in_proj / out_proj)
    "attn-qkv": [r"\.attn\.in_proj$"], "attn-out": [r"\.attn\.out_proj$"], "mlp-in": [r"\.mlp\.in_proj$"],
    "mlp-out": [r"\.mlp\.out_proj$"], "attn": [r"\.attn\.in_proj$", r"\.attn\.out_proj$"],
    "mlp": [r"\.mlp\.in_proj$", r"\.mlp\.out_proj$"],
    "in_proj": [r"\.in_proj$"], "out_proj": [r"\.out_proj$"],
}


def device_note() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def record(out: Path, row: dict) -> dict:
    row = {**row, "device": device_note(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with (out / "control.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k not in ("command", "result")}), flush=True)
    return row


def ssmquant_cmd() -> list[str]:
    return [sys.executable, "-m", "ssmquant"]


def teacher_ppl(teacher: str) -> float:
    import torch

    import ssmquant
    from ssmquant.eval.perplexity import perplexity
    from ssmquant.io.bundled import SAMPLE_HELDOUT

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = ssmquant.load_model(teacher, device=dev, dtype=torch.float32)
    with torch.no_grad():
        return perplexity(m, ssmquant.load_tokenizer(teacher), str(SAMPLE_HELDOUT), context=512, stride=512,
                          batch_size=8, max_tokens=REPORT_TOKENS, device=dev)["ppl"]


def run_ptq(out: Path, teacher: str, tag: str, name: str, flags: list[str], experiment: str = "ptq",
            group_size: int = 256) -> dict:
    if group_size != 256:
        name = f"{name}-g{group_size}"
    run = out / experiment / tag / name
    cmd = ["ssmquant", "ptq", teacher, *flags, "--group-size", str(group_size), "--eval", "--eval-tokens",
           str(REPORT_TOKENS), "--out", str(run)]
    wall = None
    if not (run / "ptq_report.json").is_file():
        t0 = time.time()
        subprocess.run(ssmquant_cmd() + cmd[1:], check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - t0
    rep = json.loads((run / "ptq_report.json").read_text())
    mods = rep["modules"]
    return record(out, {"experiment": experiment, "tag": tag, "name": name, "command": shlex.join(cmd),
                        "run": str(run), "wall_s": wall, "ppl": rep["eval"]["ppl"],
                        "rel_weight_error": sum(s["rel_weight_error"] for s in mods.values()) / len(mods)})


def run_distill(out: Path, teacher: str, tag: str, seed: int, tokens: str, extra: list[str]) -> dict:
    from ssmquant.io.bundled import SAMPLE_TRAIN

    name = f"{tokens}-s{seed}" + ("-" + "-".join(x.strip("-") for x in extra) if extra else "")
    run = out / "distill" / tag / name
    cmd = ["ssmquant", "distill", "--teacher", teacher, "--data", str(SAMPLE_TRAIN), *EMBEDDED_FLAGS, "--tokens",
           tokens, "--seed", str(seed), *extra, "--no-progress", "--no-plot", "--out", str(run)]
    wall = None
    if not (run / "summary.json").is_file():
        t0 = time.time()
        subprocess.run(ssmquant_cmd() + cmd[1:] + ["--overwrite"], check=True)
        wall = time.time() - t0
    s = json.loads((run / "summary.json").read_text())
    return record(out, {"experiment": "distill", "tag": tag, "name": name, "seed": seed, "tokens": s.get("tokens"),
                        "command": shlex.join(cmd), "run": str(run), "wall_s": wall,
                        "teacher_ppl": s.get("teacher_ppl"), "student_ppl": s.get("student_ppl"),
                        "post_hoc_ppl": s.get("post_hoc_ppl"), "val_kl": s.get("val_kl"),
                        "zero_frac": s.get("zero_frac"), "collapse_events": s.get("collapse_events")})


def _load_pair(teacher: str, student: str | None, rtn: bool):
    import torch

    import ssmquant
    from ssmquant.quant import QuantConfig
    from ssmquant.train.distill import post_hoc_ternary

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t = ssmquant.load_model(teacher, device=dev, dtype=torch.float32).eval()
    if rtn:
        s = post_hoc_ternary(t, QuantConfig(group_size=256)).to(dev).eval()
    elif student is not None:
        s = ssmquant.load_model(student, device=dev).float().eval()
    else:
        s = t
    return t, s, ssmquant.load_tokenizer(teacher)


def run_lens(out: Path, teacher: str, tag: str, name: str, student: str | None, rtn: bool, n_seqs: int,
             seqlen: int) -> dict:
    from ssmquant.eval.logit_lens import heldout_sequences, logit_lens
    from ssmquant.io.bundled import SAMPLE_HELDOUT

    t0 = time.time()
    t, s, tok = _load_pair(teacher, student, rtn)
    x = heldout_sequences(tok, str(SAMPLE_HELDOUT), n_seqs, seqlen)
    res = logit_lens(s, t, x, vocab=tok.vocab_size)
    cmd = (f"python scripts/study_control.py lens --teacher {teacher} --tag {tag} --name {name}"
           + (f" --student {student}" if student else "") + (" --rtn" if rtn else "")
           + f" --n-seqs {n_seqs} --seqlen {seqlen}")
    return record(out, {"experiment": "lens", "tag": tag, "name": name, "command": cmd, "wall_s": time.time() - t0,
                        "result": res})


def run_position(out: Path, teacher: str, tag: str, name: str, student: str | None, rtn: bool, n_seqs: int,
                 seqlen: int) -> dict:
    from ssmquant.eval.logit_lens import error_vs_position, heldout_sequences
    from ssmquant.io.bundled import SAMPLE_HELDOUT

    t0 = time.time()
    t, s, tok = _load_pair(teacher, student, rtn)
    x = heldout_sequences(tok, str(SAMPLE_HELDOUT), n_seqs, seqlen)
    res = error_vs_position(s, t, x, vocab=tok.vocab_size)
    cmd = (f"python scripts/study_control.py position --teacher {teacher} --tag {tag} --name {name}"
           + (f" --student {student}" if student else "") + (" --rtn" if rtn else "")
           + f" --n-seqs {n_seqs} --seqlen {seqlen}")
    return record(out, {"experiment": "position", "tag": tag, "name": name, "command": cmd,
                        "wall_s": time.time() - t0, "result": res})


def run_eval(out: Path, model: str, tag: str, name: str, teacher: str | None, data_dir: str, limit: int) -> dict:
    run = out / "eval" / tag / name
    cmd = ["ssmquant", "eval", model, "--tasks", "mamba7", "--limit", str(limit), "--data-dir", data_dir,
           "--no-progress", "--out", str(run)] + (["--teacher", teacher] if teacher else [])
    wall = None
    if not (run / "results.json").is_file():
        t0 = time.time()
        subprocess.run(ssmquant_cmd() + cmd[1:], check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - t0
    return record(out, {"experiment": "eval", "tag": tag, "name": name, "command": shlex.join(cmd), "run": str(run),
                        "wall_s": wall, "result": json.loads((run / "results.json").read_text())})


# ---- tables and plots ----------------------------------------------------------------------------------------------

def load_rows(out: Path) -> dict[tuple, dict]:
    rows: dict[tuple, dict] = {}
    p = out / "control.jsonl"
    for line in p.read_text().splitlines() if p.is_file() else []:
        r = json.loads(line)
        key = (r["experiment"], r["tag"], r["name"])
        if key in rows and r.get("wall_s") is None:
            r["wall_s"] = rows[key].get("wall_s")
        rows[key] = r
    return rows


def table(out: Path) -> str:
    import math

    rows = load_rows(out)
    lines = []
    for exp in ("ptq", "ablate"):
        rs = [r for k, r in sorted(rows.items()) if k[0] == exp]
        if rs:
            lines += [f"| {exp} | model | ppl | rel. weight error | wall |", "|---|---|---:|---:|---:|"]
            lines += [f"| {r['name']} | {r['tag']} | {r['ppl']:.2f} | {r['rel_weight_error']:.4f} | "
                      f"{r['wall_s'] or 0:.0f} s |" for r in rs]
            lines.append("")
    rs = [r for k, r in sorted(rows.items()) if k[0] == "distill"]
    if rs:
        lines += ["| distill | model | seed | teacher | student | × | post-hoc | val KL | zero | wall |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rs:
            lines.append(f"| {r['name']} | {r['tag']} | {r['seed']} | {r['teacher_ppl']:.2f} | {r['student_ppl']:.2f}"
                         f" | {r['student_ppl'] / r['teacher_ppl']:.3f} | {r['post_hoc_ppl']:.2f} | {r['val_kl']:.3f}"
                         f" | {r['zero_frac']:.3f} | {r['wall_s'] or 0:.0f} s |")
        lines.append("")
    for r in [r for k, r in sorted(rows.items()) if k[0] == "lens"]:
        res = r["result"]
        lines.append(f"lens {r['tag']}/{r['name']}: KL " + " ".join(f"{v:.3f}" for v in res["kl"])
                     + " | top1 " + " ".join(f"{v:.3f}" for v in res["top1"]))
    for r in [r for k, r in sorted(rows.items()) if k[0] == "position"]:
        res = r["result"]
        lines.append(f"position {r['tag']}/{r['name']} buckets {res['buckets']}: KL "
                     + " ".join(f"{v:.3f}" for v in res["kl"]))
        for i, e in enumerate(res["rel_err"]):
            g = res["growth"][i]
            lines.append(f"   layer-stream {i}: " + " ".join(f"{v:.3f}" for v in e)
                         + f"  growth {g:.2f}" if not math.isnan(g) else f"   layer-stream {i}: 0")
    for r in [r for k, r in sorted(rows.items()) if k[0] == "eval"]:
        lines.append(f"eval {r['tag']}/{r['name']}: {json.dumps(r['result'])[:400]}")
    return "\n".join(lines)


COLORS = {"teacher": "black", "qat-kd": "tab:blue", "dfssm-r21": "tab:purple", "rtn": "tab:red",
          "gptq-qep0.5": "tab:orange", "lrec32": "tab:green"}
LINES = {"mamba": "-", "mamba-large": "-.", "transformer": "--"}


def _style(r: dict) -> dict:
    """Colour by what is analysed, line by which model (the legend reads model: analysed)."""
    return {"color": COLORS.get(r["name"], "gray"), "ls": LINES.get(r["tag"], ":"), "marker": "o", "ms": 4,
            "label": f"{r['tag']}: {r['name']}"}


def _legend_below(fig, ax) -> None:
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_rows(out)
    lens = [r for k, r in sorted(rows.items()) if k[0] == "lens"]
    if lens:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4.8))
        for r in lens:
            res = r["result"]
            pts = [(i, v) for i, v in enumerate(res["kl"]) if v > 1e-9]   # the teacher's own output: KL 0, off a log axis
            ax[0].plot(*zip(*pts), **_style(r))
            ax[1].plot(range(len(res["top1"])), res["top1"], **_style(r))
        ax[0].set(xlabel="layer (0 = embedding)", ylabel="KL(teacher final ‖ lens)", yscale="log",
                  title="logit lens: KL to the teacher's output")
        ax[1].set(xlabel="layer (0 = embedding)", ylabel="top-1 agreement with teacher's output",
                  title="logit lens: top-1 agreement")
        _legend_below(fig, ax[0])
        fig.savefig("docs/img/study_lens.png", dpi=110)
    pos = [r for k, r in sorted(rows.items()) if k[0] == "position"]
    if pos:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4.8))
        for r in pos:
            res = r["result"]
            mids = [(lo + hi) / 2 for lo, hi in res["buckets"]]
            ax[0].plot(mids, res["rel_err"][-1], **_style(r))
            ax[1].plot(mids, res["kl"], **_style(r))
        ax[0].set(xscale="log", xlabel="position (bucket centre)", ylabel="‖h_s − h_t‖ / ‖h_t‖, last layer",
                  title="residual-stream error vs position")
        ax[1].set(xscale="log", yscale="log", xlabel="position (bucket centre)", ylabel="KL(teacher ‖ student)",
                  title="output KL vs position")
        for a in ax:
            a.axvline(512, color="gray", lw=0.8, ls=":")
        _legend_below(fig, ax[0])
        fig.savefig("docs/img/study_position.png", dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("experiment", choices=["ptq", "ablate", "distill", "lens", "position", "eval", "table", "plot"])
    p.add_argument("--out", default="runs/study", help="study directory (default runs/study)")
    p.add_argument("--teacher", default="src/ssmquant/assets/teacher")
    p.add_argument("--tag", default="mamba", help="model label in the results (mamba, transformer, mamba-large)")
    p.add_argument("--name", default=None, help="lens/position/eval: label of the analysed model")
    p.add_argument("--student", default=None, help="lens/position/eval: model directory (default: the teacher)")
    p.add_argument("--rtn", action="store_true", help="lens/position: post-hoc RTN ternary of the teacher (group 256)")
    p.add_argument("--methods", nargs="+", default=[m for m in PTQ_METHODS if m != "hg-gsq"],
                   help="ptq methods (default: all but hg-gsq, the slowest)")
    p.add_argument("--group-size", type=int, default=256, help="ptq: group size (default 256)")
    p.add_argument("--parts", nargs="+", default=list(ABLATE))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tokens", default="100K")
    p.add_argument("--extra", default="", help="distill: further flags as one string, e.g. --extra='--lr 1e-3'")
    p.add_argument("--n-seqs", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--data-dir", default=".carry/evaldata")
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--with-teacher", action="store_true", help="eval: paired differences against --teacher")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.experiment == "ptq":
        record(out, {"experiment": "teacher", "tag": a.tag, "name": "teacher", "ppl": teacher_ppl(a.teacher),
                     "command": f"python scripts/study_control.py ptq --teacher {a.teacher}"})
        for m in a.methods:
            run_ptq(out, a.teacher, a.tag, m, PTQ_METHODS[m], group_size=a.group_size)
    elif a.experiment == "ablate":
        for part in a.parts:
            run_ptq(out, a.teacher, a.tag, part, ["--method", "rtn", "--include", *ABLATE[part]], "ablate")
    elif a.experiment == "distill":
        for s in a.seeds:
            run_distill(out, a.teacher, a.tag, s, a.tokens, shlex.split(a.extra))
    elif a.experiment in ("lens", "position"):
        fn = run_lens if a.experiment == "lens" else run_position
        fn(out, a.teacher, a.tag, a.name or ("rtn" if a.rtn else "teacher" if not a.student else "student"),
           a.student, a.rtn, a.n_seqs, a.seqlen)
    elif a.experiment == "eval":
        run_eval(out, a.student or a.teacher, a.tag, a.name or "teacher", a.teacher if a.with_teacher else None,
                 a.data_dir, a.limit)
    elif a.experiment == "plot":
        plot(out)
    print(table(out))


if __name__ == "__main__":
    sys.exit(main())
