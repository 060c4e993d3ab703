"""CPU batch-1 decode: tokens/s and peak RSS, dense vs packed ternary (our torch code) and llama.cpp (GGUF).

Each configuration runs in its own subprocess so its peak RSS (VmHWM) is its own; tok/s is the median of 3 runs
(the CI machine is shared: see ``load_average_1m_at_end``). Prints one JSON object with
the device, versions, absolute numbers, the baseline (our dense fp32 teacher, measured in the same run) and ratios.

    python benchmarks/cpu_inference.py --tokens 128 --threads 2 [--llama-python /tmp/llamavenv/bin/python]

Without --model it uses the bundled teacher and makes a ternary version (quantize_ group 256 + convert, no
training: speed and memory do not depend on the values), saves it packed (1.6-bit) and exports GGUF f16 / TQ2_0 /
TQ1_0 into --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

OURS = r"""
import json, sys, time, torch
REPEATS = 3
import ssmquant
path, dtype, runtime, n, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
if runtime == "dense":
    m = ssmquant.load_model(path, dtype=dtype)
else:
    from ssmquant.io.checkpoints import resolve_checkpoint, _read_json
    from ssmquant.quant.packed_io import load_packed_model
    ck = resolve_checkpoint(path)
    m = load_packed_model(ck, _read_json(ck.config_path), dtype=dtype, runtime=runtime)
prompt = torch.tensor([[11, 402, 77, 1003, 5, 88, 912, 31]])
def run(k):
    cache = m.allocate_cache(1)
    with torch.inference_mode():
        logits = m(prompt, cache)
        for _ in range(k):
            logits = m(logits[:, -1:].argmax(-1), cache)
run(4)
speeds = []
for _ in range(REPEATS):
    t = time.perf_counter(); run(n); speeds.append(n / (time.perf_counter() - t))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]  # this process only
print(json.dumps({"tok_per_s": sorted(speeds)[len(speeds) // 2], "tok_per_s_runs": speeds,
                  "peak_rss_mb": int(hwm) / 1024}))
"""

LLAMA = r"""
import json, sys, time
REPEATS = 3
from llama_cpp import Llama
path, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=max(256, n + 64), n_batch=64, n_threads=threads, logits_all=True, verbose=False)
prompt = [11, 402, 77, 1003, 5, 88, 912, 31]
def run(k):
    llm.reset()
    llm.eval(prompt)
    for _ in range(k):
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
        llm.eval([tok])
run(4)
speeds = []
for _ in range(REPEATS):
    t = time.perf_counter(); run(n); speeds.append(n / (time.perf_counter() - t))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]  # this process only
print(json.dumps({"tok_per_s": sorted(speeds)[len(speeds) // 2], "tok_per_s_runs": speeds,
                  "peak_rss_mb": int(hwm) / 1024}))
"""


def _sub(python: str, code: str, *args) -> dict:
    res = subprocess.run([python, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=900)
    if res.returncode:
        return {"error": res.stderr.strip().splitlines()[-1][:300] if res.stderr.strip() else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def prepare(work: Path, want_gguf: bool) -> dict:
    import ssmquant
    from ssmquant.export.gguf import GGUFExportConfig, export_gguf
    from ssmquant.quant import QuantConfig, config_dict, convert, quantize_
    from ssmquant.quant.packed_io import save_packed_model

    teacher = Path(ssmquant.__file__).parent / "assets" / "teacher"
    student = work / "student-1.6bit"
    if not (student / "config.json").exists():
        m = ssmquant.load_model(teacher)
        qc = QuantConfig(group_size=256)
        quantize_(m, qc)
        convert(m)
        save_packed_model(m, student, tokenizer=ssmquant.load_tokenizer(teacher), packing="1.6bit",
                          quant_info=config_dict(qc))
    files = {"teacher": str(teacher), "student": str(student)}
    if want_gguf:
        for name, src, t in (("gguf_f16", teacher, "f16"), ("gguf_tq2_0", student, "tq2_0"),
                             ("gguf_tq1_0", student, "tq1_0")):
            out = work / f"{name}.gguf"
            if not out.exists():
                export_gguf(GGUFExportConfig(str(src), str(out), type=t))
            files[name] = str(out)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128, help="decode steps timed per configuration")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ssmquant-cpu-bench"))
    ap.add_argument("--llama-python", default="/tmp/llamavenv/bin/python",
                    help="a python with llama-cpp-python installed (skipped if missing)")
    args = ap.parse_args()
    import torch

    import ssmquant

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    have_llama = Path(args.llama_python).exists()
    files = prepare(work, have_llama)
    py = sys.executable
    rows = {
        "ours dense fp32 (teacher)": _sub(py, OURS, files["teacher"], "fp32", "dense", args.tokens, args.threads),
        "ours dense fp16 (teacher)": _sub(py, OURS, files["teacher"], "fp16", "dense", args.tokens, args.threads),
        "ours packed 1.6bit, dense cache fp32": _sub(py, OURS, files["student"], "fp32", "dense", args.tokens,
                                                     args.threads),
        "ours packed 1.6bit, dense cache fp16": _sub(py, OURS, files["student"], "fp16", "dense", args.tokens,
                                                     args.threads),
        "ours packed 1.6bit, codes only (dequant per call)": _sub(py, OURS, files["student"], "fp32", "packed",
                                                                  args.tokens, args.threads),
    }
    versions = {"ssmquant": ssmquant.__version__, "torch": torch.__version__, "python": platform.python_version()}
    if have_llama:
        for k in ("gguf_f16", "gguf_tq2_0", "gguf_tq1_0"):
            rows[f"llama.cpp {k[5:].upper()}"] = _sub(args.llama_python, LLAMA, files[k], args.tokens, args.threads)
            rows[f"llama.cpp {k[5:].upper()}"]["file_mb"] = os.path.getsize(files[k]) / 1e6
        v = subprocess.run([args.llama_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                           capture_output=True, text=True)
        versions["llama_cpp_python"] = v.stdout.strip()
    base = rows["ours dense fp32 (teacher)"].get("tok_per_s")
    for r in rows.values():
        if base and "tok_per_s" in r:
            r["ratio_vs_baseline"] = r["tok_per_s"] / base
    load = os.getloadavg()
    print(json.dumps({
        "device": f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads={args.threads}",
        "load_average_1m_at_end": load[0], "versions": versions, "decode_tokens": args.tokens, "batch": 1,
        "model": "bundled teacher (Mamba-2 d256, 4 layers, 8k vocab) and its ternary version (group 256)",
        "baseline": "ours dense fp32 (teacher)", "results": rows}, indent=2))


if __name__ == "__main__":
    main()
