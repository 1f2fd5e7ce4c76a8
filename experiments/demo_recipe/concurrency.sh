#!/usr/bin/env bash
# How many demo-recipe runs one GPU holds: pretraining throughput of one process alone against three processes
# sharing the card (the three variants of run.sh: full, no_prealign, no_align), same data, same steps, in one call.
#
#   bash experiments/demo_recipe/concurrency.sh [OUT_DIR]      (default: ./demo_recipe_concurrency)
#
# Environment: STEPS (pretraining steps per process, default 400), SAMPLES (generated samples per task, default
# 6000), the data's other options as in run.sh (data_options.sh), TOKENIZER (tokenizer.model file; default:
# mistral-common's), EXTRA (more Hydra overrides).
# Writes OUT_DIR/concurrency.json: card, per-process median samples/s (the first quarter of logged steps skipped:
# start-up and compilation) and wall seconds, and the aggregate speed-up of three processes over one.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${1:-$PWD/demo_recipe_concurrency}
R=$OUT_DIR/work
PY=${PYTHON:-python3}
STEPS=${STEPS:-400} SAMPLES=${SAMPLES:-6000}
export WANDB_MODE=${WANDB_MODE:-offline} PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
mkdir -p "$R"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1) || card=cpu
source experiments/demo_recipe/data_options.sh  # the data's settings, as in run.sh
$PY -m eve_lightning.data.demo --out "$R/data/demo_recipe" "${gen_flags[@]}" --reuse | tail -1
extra=()
[ -n "${EXTRA:-}" ] && read -r -a extra <<< "$EXTRA"
[ -n "${TOKENIZER:-}" ] && extra+=("data.tokenizer=$TOKENIZER")
common=(experiment=demo_recipe +stage=pretrain "paths.root_dir=$R" "${gen_overrides[@]}" logger=csv
        "recipe.steps.pretrain=$STEPS" trainer.max_time=null trainer.limit_val_batches=0 "~callbacks.benchmark_val"
        ${extra[@]+"${extra[@]}"})
one() {  # NAME [overrides...]: one pretraining process; its wall seconds go to $R/NAME.seconds
  local start; start=$(date +%s)
  $PY -m eve_lightning.train "${common[@]}" "experiment_name=$1" "${@:2}" > "$R/$1.log" 2>&1
  echo $(( $(date +%s) - start )) > "$R/$1.seconds"
  echo "$1 done in $(cat "$R/$1.seconds") s"
}
one alone
one shared_full & one shared_no_prealign & one shared_no_align "${no_align_overrides[@]}" &
wait
$PY - "$R" "$card" "$STEPS" > "$OUT_DIR/concurrency.json" <<'PY'
import csv, json, re, statistics, sys
from pathlib import Path

root, card, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
runs = {}
for name in ("alone", "shared_full", "shared_no_prealign", "shared_no_align"):
    log = (root / f"{name}.log").read_text()
    metrics = Path(re.findall(r"^metrics: *(\S+)", log, re.M)[-1])
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("perf/samples_per_sec")]
    rates = [float(r["perf/samples_per_sec"]) for r in rows][len(rows) // 4:]
    runs[name] = {"median_samples_per_s": round(statistics.median(rates), 1), "logged_steps": len(rates),
                  "wall_s": int((root / f"{name}.seconds").read_text())}
shared = sum(v["median_samples_per_s"] for k, v in runs.items() if k.startswith("shared"))
print(json.dumps({"card": card, "steps_per_process": steps, "runs": runs,
                  "aggregate_speedup_3_vs_1": round(shared / runs["alone"]["median_samples_per_s"], 2)}, indent=1))
PY
cat "$OUT_DIR/concurrency.json"
