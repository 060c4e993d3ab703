#!/usr/bin/env bash
# Issue 11: distillation on 2 GPUs (DDP and FSDP2) vs 1 GPU. Run on the nvidia-h200-x2 device from the repo root:
#   PYTHONPATH=$PWD/src bash scripts/multi_gpu_check.sh OUTDIR
# 1) correctness on the bundled teacher: 1-GPU losses vs 2-GPU DDP losses (same global batch), the 2-GPU checkpoint
#    resumed on 1 GPU; 2) throughput and peak memory on a random 1.3B-shaped teacher (8k vocab), 1 GPU vs DDP vs FSDP2.
set -u
OUT=${1:-/tmp/mgpu}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
SQ="python -m ssmquant"; TR="python -m torch.distributed.run --nproc_per_node 2 -m ssmquant"
SMALL="distill --tokens ${SMALL_TOKENS:-65536} --seq-len 256 --micro-batch 8 --grad-accum 2 --report-tokens 2048 --log-every 1 --no-progress --no-plot --eval-sequences 4"
$SQ $SMALL --out $OUT/one > $OUT/one.log 2>&1; echo "one rc=$?"
$TR $SMALL --out $OUT/two --stop-after-steps ${SPLIT_STEPS:-8} > $OUT/two.log 2>&1; echo "two rc=$?"
$SQ $SMALL --out $OUT/two --resume > $OUT/two_resume.log 2>&1; echo "resume-on-1 rc=$?"
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def losses(run):
    return {r["step"]: r["loss"] for r in map(json.loads, open(f"{out}/{run}/metrics.jsonl")) if "loss" in r}
a, b = losses("one"), losses("two")
d = max(abs(a[k] - b[k]) / abs(a[k]) for k in a)
print(f"steps {len(a)} vs {len(b)}; max relative loss difference 1 GPU vs 2 GPU (+resume on 1): {d:.2e}")
PY
python - "$OUT" <<'PY'
import sys, torch, ssmquant
from ssmquant.model.config import Mamba2Config
from ssmquant.model.mamba2 import Mamba2LMHeadModel
from ssmquant.io.checkpoints import save_model
m = Mamba2LMHeadModel(Mamba2Config(d_model=int(__import__("os").environ.get("BIG_D", 2048)),
                                   n_layer=int(__import__("os").environ.get("BIG_L", 48)), vocab_size=8192))
m.init_weights(0)
save_model(m, f"{sys.argv[1]}/big_teacher", tokenizer=ssmquant.load_tokenizer("src/ssmquant/assets/teacher"))
print("big teacher parameters", m.num_parameters())
PY
BIG="distill --teacher $OUT/big_teacher --seq-len ${BIG_SEQ:-2048} --micro-batch 1 --tokens 10M --log-every 1 --no-progress --no-plot --eval-sequences 1 --stop-after-steps ${BIG_STEPS:-5} --keep-last 1"
$SQ $BIG --grad-accum 1 --out $OUT/big1 > $OUT/big1.log 2>&1; echo "big 1gpu rc=$?"
$TR $BIG --grad-accum 2 --out $OUT/big_ddp > $OUT/big_ddp.log 2>&1; echo "big ddp rc=$?"
$TR $BIG --grad-accum 2 --fsdp --out $OUT/big_fsdp > $OUT/big_fsdp.log 2>&1; echo "big fsdp rc=$?"
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for run in ("big1", "big_ddp", "big_fsdp"):
    try:
        recs = [r for r in map(json.loads, open(f"{out}/{run}/metrics.jsonl")) if "tok_per_s" in r]
    except OSError:
        print(run, "no metrics"); continue
    steady = recs[1:] or recs
    tps = sorted(r["tok_per_s"] for r in steady)[len(steady) // 2]
    print(f"{run}: median tok/s {tps:,.0f} (per GPU {tps / (1 if run == 'big1' else 2):,.0f}); "
          f"peak mem rank0 {max(r.get('peak_mem_gb', 0) for r in recs):.1f} GB")
PY
