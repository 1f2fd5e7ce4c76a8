#!/usr/bin/env bash
# FP8 against BF16 over a few hundred steps of real training: the demo recipe's pretraining stage (demo_125m decoder,
# CLIP-shaped teacher, the procedural shapes data) is trained three times from the same seed, so with the same
# initial weights and data order: BF16, FP8 (model.fp8), and BF16 again (the gap two unchanged runs show). The
# curves are then compared with python -m eve_lightning.bench.loss_curves.
#
#   bash benchmarks/fp8_loss_curve.sh OUT_DIR [STEPS]        (default 300 steps; needs an H100/H200-class GPU)
#
# Environment: ROOT (working folder: data and run dirs; default /tmp/fp8_loss_curve), RECIPE (the float8 recipe,
# default tensorwise), TOLERANCE (largest relative gap of the mean loss over the last 100 steps, default 0.05), EXTRA (more Hydra overrides for
# every run). The demo data is generated on first use (308k samples; python -m eve_lightning.bench.demo_data
# --out "$ROOT/data/demo_recipe" makes the same set and times it). Each run's log and metrics.csv land in OUT_DIR.
set -euo pipefail
out=$(realpath -m "${1:?usage: bash benchmarks/fp8_loss_curve.sh OUT_DIR [STEPS]}")  # from the caller's folder
steps=${2:-300}
root=$(realpath -m "${ROOT:-/tmp/fp8_loss_curve}")
cd "$(dirname "$0")/.."
mkdir -p "$out"
extra=()
[ -n "${EXTRA:-}" ] && read -r -a extra <<< "$EXTRA"
export PYTHONUNBUFFERED=1
for run in bf16 fp8 bf16_again; do
  fp8=null
  [ "$run" = fp8 ] && fp8=${RECIPE:-tensorwise}
  start=$(date +%s)
  python -m eve_lightning.train experiment=demo_recipe +stage=pretrain logger=csv "paths.root_dir=$root" \
    "trainer.max_steps=$steps" trainer.max_time=null trainer.log_every_n_steps=1 "model.fp8=$fp8" \
    "hydra.run.dir=$root/logs/$run" ${extra[@]+"${extra[@]}"} > "$out/$run.log" 2>&1 \
    || { echo "$run failed; the end of $out/$run.log:"; tail -20 "$out/$run.log"; exit 1; }
  cp "$root/logs/$run/csv/metrics.csv" "$out/$run.metrics.csv"
  echo "$run (model.fp8=$fp8): $steps steps in $(( $(date +%s) - start )) s (the first run's time includes making the demo data)"
done
python -m eve_lightning.bench.loss_curves "$out/bf16.metrics.csv" "$out/fp8.metrics.csv" \
  --noise "$out/bf16_again.metrics.csv" --tolerance "${TOLERANCE:-0.05}" --out "$out/loss_curves.json"
