"""Presenting evaluation results: an on-screen table, a JSON file, and a bar chart (student vs teacher).

Works on the dict ``ssmquant.eval.evaluate`` returns. matplotlib is imported only when a chart is drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

_LABELS = {"lambada_openai": "LAMBADA", "hellaswag": "HellaSwag", "piqa": "PIQA", "arc_easy": "ARC-E",
           "arc_challenge": "ARC-C", "winogrande": "WinoGrande", "openbookqa": "OBQA", "boolq": "BoolQ"}


def _pct(x: float) -> str:
    return "   -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:6.2f}"


def format_table(results: dict) -> str:
    """A fixed-width table: per task and metric, value ± stderr, chance, teacher and difference where present."""
    teacher = results.get("teacher")
    head = f"{'task':<15}{'metric':<11}{'n':>6}{'chance':>8}{'value':>9}{'±se':>7}"
    if teacher:
        head += f"{'teacher':>9}{'±se':>7}{'diff':>8}{'95% CI (paired)':>19}"
    lines = [head, "-" * len(head)]
    for t in results["tasks"]:
        s = results["student"]["tasks"][t]
        for m, v in s["metrics"].items():
            is_ppl = m == "perplexity"
            fmt = (lambda x: f" {x:.4g}") if is_ppl else _pct  # leading space: huge values stay apart
            mark = "*" if m == s["headline"] else " "
            row = (f"{t:<15}{m + mark:<11}{s['n']:>6}{'' if is_ppl else _pct(s['chance']):>8}"
                   f"{fmt(v['value']):>9}{fmt(v['stderr']):>7}")
            if teacher:
                tv = teacher["tasks"][t]["metrics"][m]
                d = results["diff"]["tasks"][t].get(m)
                ci = f"[{fmt(d['ci'][0]).strip()}, {fmt(d['ci'][1]).strip()}]" if d and "ci" in d else ""
                row += (f"{fmt(tv['value']):>9}{fmt(tv['stderr']):>7}"
                        f"{fmt(v['value'] - tv['value']):>8}{ci:>19}")
            lines.append(row)
    suite = results.get("suite")
    if suite:
        lines.append("-" * len(head))
        lo, hi = suite["ci"]
        row = (f"{'average':<15}{'headline':<11}{'':>6}{_pct(suite['chance']):>8}{_pct(suite['mean']):>9}"
               f"{'':>7}  95% CI [{100 * lo:.2f}, {100 * hi:.2f}]")
        if teacher and "teacher" in suite:
            tlo, thi = suite["teacher"]["ci"]
            dlo, dhi = suite["diff"]["ci"]
            row += (f"\n{'':<26}teacher {100 * suite['teacher']['mean']:.2f} [{100 * tlo:.2f}, {100 * thi:.2f}]"
                    f"   diff {100 * suite['diff']['mean']:+.2f} [{100 * dlo:+.2f}, {100 * dhi:+.2f}]")
        lines.append(row)
        lines.append("* headline metric (the one the Mamba-2 paper reports); average = mean of headline metrics "
                     "over tasks; values in %")
    for who in ("student", "teacher"):
        ppl = (results.get(who) or {}).get("perplexity")
        if ppl:
            lines.append(f"perplexity ({who}, {ppl['source']}): {ppl['ppl']:.3f} over {ppl['n_tokens']} tokens "
                         f"(context {ppl['context']}, stride {ppl['stride']})")
    return "\n".join(lines)


def strip_items(results: dict) -> dict:
    """A copy of ``results`` without per-item score lists (those go to items.json)."""
    out = dict(results)
    for who in ("student", "teacher"):
        if out.get(who):
            out[who] = dict(out[who], tasks={t: {k: v for k, v in r.items() if k != "items"}
                                             for t, r in out[who]["tasks"].items()})
    return out


def plot_results(results: dict, path: str | Path) -> Path:
    """Bar chart of each task's headline metric with ±1.96·stderr error bars, teacher beside student, chance
    marked per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in results["tasks"]]
    who = [w for w in ("student", "teacher") if results.get(w)]
    fig, ax = plt.subplots(figsize=(1.3 * len(tasks) + 2, 4))
    width = 0.8 / len(who)
    for k, w in enumerate(who):
        vals, errs = [], []
        for t in tasks:
            r = results[w]["tasks"][t]
            m = r["metrics"][r["headline"]]
            vals.append(100 * m["value"])
            errs.append(196 * m["stderr"] if not math.isnan(m["stderr"]) else 0.0)
        xs = [i + (k - (len(who) - 1) / 2) * width for i in range(len(tasks))]
        ax.bar(xs, vals, width, yerr=errs, capsize=3, label=w)
    for i, t in enumerate(tasks):
        ch = results["student"]["tasks"][t]["chance"]
        ax.hlines(100 * ch, i - 0.45, i + 0.45, colors="k", linestyles="dotted")
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{_LABELS.get(t, t)}\n({results['student']['tasks'][t]['headline']})" for t in tasks],
                       fontsize=8)
    ax.set_ylabel("accuracy (%)  ·  dotted: chance")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right")
    ax.set_title("zero-shot accuracy, 95% error bars")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict, out_dir: str | Path, *, plot: bool = True) -> dict[str, Path]:
    """Write results.json (aggregates), items.json (per-item scores), results.txt (table), results.png (chart)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "results.json", "items": out_dir / "items.json", "table": out_dir / "results.txt"}
    files["json"].write_text(json.dumps(strip_items(results), indent=2) + "\n")
    items = {w: {t: r["items"] for t, r in results[w]["tasks"].items()}
             for w in ("student", "teacher") if results.get(w)}
    files["items"].write_text(json.dumps(items) + "\n")
    files["table"].write_text(format_table(results) + "\n")
    if plot and results["tasks"]:
        files["png"] = plot_results(results, out_dir / "results.png")
    return files
