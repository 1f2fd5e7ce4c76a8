#!/usr/bin/env bash
# GPU smoke checks on one CUDA device: the GPU tests, the three demo stages in bf16 chained through exports,
# and a few steps under each sharded strategy preset (DeepSpeed ZeRO-2, ZeRO-3, FSDP with frozen and trained
# parameters side by side). Writes a one-line JSON summary per run to $RESULTS (default: ./gpu_smoke_results).
#   bash experiments/gpu_smoke/run.sh [TOKENIZER_MODEL_FILE]
set -uo pipefail
cd "$(dirname "$0")/../.."
RESULTS=${RESULTS:-gpu_smoke_results}
TOK=${1:-}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
tok=(); [ -n "$TOK" ] && tok=("data.tokenizer=$TOK")
python3 - <<'PY'
import torch, transformers, lightning
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print("transformers", transformers.__version__, "lightning", lightning.__version__)
PY

[[ -z "$ONLY" ]] && python3 -m pytest -q -m gpu tests 2>&1 | tail -3 | tee "$RESULTS/pytest_gpu.txt"

common=(cluster=gpu1 logger=csv "${tok[@]}" paths.root_dir="$PWD/gpu_smoke_run" trainer.enable_progress_bar=false
        data.loader.num_workers=4 data.loader.pin_memory=true data.synthetic.samples=512)
summary() {  # $1 = name, $2 = run log; prints the last losses, throughput and peak memory
  python3 - "$1" "$2" "$RESULTS" <<'PY'
import csv, glob, json, re, sys
name, logf, out = sys.argv[1:]
text = open(logf).read()
m = re.findall(r"run dir:\s+(\S+)", text)
res = {"run": name, "ok": "checkpoint:" in text}
if m:
    rows = list(csv.DictReader(open(m[-1] + "/csv/metrics.csv")))
    tl = [r for r in rows if r.get("train/loss")]
    if tl:
        res.update(first_loss=float(tl[0]["train/loss"]), last_loss=float(tl[-1]["train/loss"]), steps=len(tl))
    sps = [float(r["perf/samples_per_sec"]) for r in rows if r.get("perf/samples_per_sec")]
    if sps:
        res["samples_per_sec_last10"] = sum(sps[-10:]) / len(sps[-10:])
    mem = [float(r["perf/peak_mem_gib"]) for r in rows if r.get("perf/peak_mem_gib")]
    if mem:
        res["peak_mem_gib"] = max(mem)
    mfu = [float(r["perf/mfu"]) for r in rows if r.get("perf/mfu")]
    if mfu:
        res["mfu_last"] = mfu[-1]
err = [l for l in text.splitlines() if "Error" in l][-3:]
if not res["ok"]:
    res["errors"] = err
print(json.dumps(res))
PY
}
ONLY=${ONLY:-}  # a regex of run names to run (default: all)
run() {  # $1 = name, rest = overrides
  local name=$1; shift
  [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && return
  timeout 300 python3 -m eve_lightning.train "${common[@]}" "$@" > "$RESULTS/$name.log" 2>&1
  summary "$name" "$RESULTS/$name.log" | tee -a "$RESULTS/summary.jsonl"
  if ! grep -q "checkpoint:" "$RESULTS/$name.log"; then
    { echo "== $name (last 40 lines)"; tail -40 "$RESULTS/$name.log"; } >> "$RESULTS/failures.txt"
  fi
  rm -f "$RESULTS/$name.log"
}
run bf16_prealign +stage=prealign trainer.max_steps=40
run bf16_pretrain +stage=pretrain init_from=gpu_smoke_run/runs/demo/prealign trainer.max_steps=40
run bf16_sft +stage=sft init_from=gpu_smoke_run/runs/demo/pretrain trainer.max_steps=40
run zero2_pretrain +stage=pretrain strategy=deepspeed_zero2 trainer.max_steps=10 callbacks.stage_export.publish_to=[]
run zero3_pretrain +stage=pretrain strategy=deepspeed_zero3 trainer.max_steps=10 callbacks.stage_export.publish_to=[]
run zero3_prealign +stage=prealign strategy=deepspeed_zero3 trainer.max_steps=10 callbacks.stage_export.publish_to=[]
run fsdp_prealign +stage=prealign strategy=fsdp trainer.max_steps=10 callbacks.stage_export.publish_to=[]
run fsdp_pretrain +stage=pretrain strategy=fsdp trainer.max_steps=10 callbacks.stage_export.publish_to=[]
