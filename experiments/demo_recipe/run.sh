#!/usr/bin/env bash
# The demo recipe on one GPU: demo data, prealign -> pretrain -> sft chained through stage exports, then the
# held-out evaluation. Variants (the ablations):
#   full          the recipe
#   no_prealign   pretrain starts from random weights (no stage 1)
#   no_align      every stage with model.eve.align_weight=0 (no aligner, no teacher)
#
#   bash experiments/demo_recipe/run.sh [VARIANT ...]       (default: full)
#
# Environment:
#   ROOT       working folder: data, logs, exports (default: ./demo_recipe_run)
#   RESULTS    where per-variant logs, stage timings and eval results go (default: $ROOT/results)
#   PARALLEL   1: run the given variants side by side on the one GPU (wall times are then shared-GPU times). Each
#              stage's max_time is then lifted (trainer.max_time=null), so that every variant takes the recipe's
#              steps: the caps are sized for one process alone on an H100
#   TIME_CAPS  on | off: keep or lift the stages' max_time (default: on alone, off with PARALLEL=1)
#   TOKENIZER  tokenizer.model file (default: the one shipped by mistral-common)
#   EXTRA      extra Hydra overrides for every training command (e.g. "model=tiny cluster=cpu" for a smoke run)
#   SAMPLES    training samples per task of the generated data (default 153600, as data.synthetic.samples: SFT sees
#              each sample once; 400 held out per task)
#   MAX_TURNS  most questions per image conversation of the generated data (default 10, as data.synthetic.max_turns)
#   TURNS      how a conversation's questions are picked: independent (default, as data.synthetic.turns; no turn can be
#              answered from the text of the others) or any
#   SHUFFLED   share of captions that list the objects in random order (default 0.5, as data.synthetic.shuffled_captions)
#   ANSWERS    short ("red.") or restated ("the circle is red.", default, as data.synthetic.answers)
#   SHAPE_FIRST share of training captions that name each shape first (default 0.5, as
#              data.synthetic.shape_first_captions)
#   STOP_AFTER prealign | pretrain | sft: stop every variant after this stage (a later call goes on from there:
#              stages whose export and timing exist are skipped)
# Summarize afterwards with: python experiments/demo_recipe/summarize.py --results $RESULTS
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-$PWD/demo_recipe_run}
RESULTS=${RESULTS:-$ROOT/results}
PY=${PYTHON:-python3}
export WANDB_MODE=${WANDB_MODE:-offline} PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # variants share one GPU
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(full)
mkdir -p "$RESULTS"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1) || card=""
echo "${card:-cpu}" > "$RESULTS/card.txt"
$PY -c "import torch, transformers, lightning; print(torch.__version__, transformers.__version__, lightning.__version__)" \
  > "$RESULTS/versions.txt"

extra=()
[ -n "${EXTRA:-}" ] && read -r -a extra <<< "$EXTRA"
tok=()
[ -n "${TOKENIZER:-}" ] && tok=("data.tokenizer=$TOKENIZER")
source experiments/demo_recipe/data_options.sh  # gen_flags, gen_overrides, no_align_overrides
caps_default=on
[ "${PARALLEL:-0}" = 1 ] && caps_default=off  # side by side, the caps sized for one process would cut steps
caps=()
[ "${TIME_CAPS:-$caps_default}" = off ] && caps=(trainer.max_time=null)
logger=()
if ! $PY -c "import wandb" 2> /dev/null; then  # W&B asked for by the experiment, but not installed here
  echo "!! wandb is not installed: logging to CSV alone (pip install wandb for W&B offline logs)"; logger=(logger=csv)
fi
common=(experiment=demo_recipe "paths.root_dir=$ROOT" "${gen_overrides[@]}" ${tok[@]+"${tok[@]}"} ${caps[@]+"${caps[@]}"}
        ${logger[@]+"${logger[@]}"} ${extra[@]+"${extra[@]}"})

data="$ROOT/data/demo_recipe"
echo "== demo data -> $data"  # kept when made with the same parameters, else generated again
data_start=$(date +%s)
$PY -m eve_lightning.data.demo --out "$data" "${gen_flags[@]}" --reuse | tee -a "$RESULTS/data.log"
cp "$data/generation.json" "$RESULTS/generation.json"
echo $(( $(date +%s) - data_start )) > "$RESULTS/data.seconds"
echo "   data: $(cat "$RESULTS/data.seconds") s"

order() { case $1 in prealign) echo 1 ;; pretrain) echo 2 ;; sft) echo 3 ;; *) echo 4 ;; esac; }
allowed() { [ -z "${STOP_AFTER:-}" ] || [ "$(order "$1")" -le "$(order "$STOP_AFTER")" ]; }

stage() {  # VARIANT STAGE [overrides...]: one training stage; its log and wall seconds go to $RESULTS/VARIANT
  local variant=$1 name=$2; shift 2
  local out="$RESULTS/$variant" start
  mkdir -p "$out"
  allowed "$name" || return 0
  if [ -f "$out/$name.seconds" ] && [ -f "$ROOT/runs/demo_recipe_$variant/$name/config.json" ]; then
    echo "== $variant: $name already done ($(cat "$out/$name.seconds") s)"; return 0
  fi
  start=$(date +%s)
  echo "== $variant: $name"
  if ! $PY -m eve_lightning.train "${common[@]}" "experiment_name=demo_recipe_$variant" "+stage=$name" publish=true "$@" \
      > "$out/$name.log" 2>&1; then
    echo "!! $variant $name failed; last lines of $out/$name.log:"; tail -20 "$out/$name.log"; return 1
  fi
  echo $(( $(date +%s) - start )) > "$out/$name.seconds"
  local csv
  csv=$(sed -n 's/^metrics: *//p' "$out/$name.log" | tail -1)
  [ -n "$csv" ] && cp "$csv" "$out/$name.metrics.csv"
  grep -E "^(run dir|metrics):" "$out/$name.log" | sed "s/^/   /"
}

evaluate() {  # VARIANT: greedy answers to every held-out question and caption image
  local variant=$1 start
  allowed eval || return 0
  start=$(date +%s)
  echo "== $variant: held-out evaluation"
  if ! $PY -m eve_lightning.eval benchmark=demo "model=$ROOT/runs/demo_recipe_$variant/sft" "data.root=$data" \
      batch_size=64 progress=false overwrite=true "output_dir=$RESULTS/$variant/eval" \
      > "$RESULTS/$variant/eval.json" 2> "$RESULTS/$variant/eval.log"; then
    echo "!! $variant evaluation failed; last lines of $RESULTS/$variant/eval.log:"; tail -20 "$RESULTS/$variant/eval.log"
    return 1
  fi
  echo $(( $(date +%s) - start )) > "$RESULTS/$variant/eval.seconds"
  tail -1 "$RESULTS/$variant/eval.json"
}

run_variant() {
  local v=$1 runs="$ROOT/runs/demo_recipe_$1"
  case $v in
    full)
      stage full prealign && stage full pretrain "init_from=$runs/prealign" && stage full sft "init_from=$runs/pretrain" ;;
    no_prealign)
      stage no_prealign pretrain && stage no_prealign sft "init_from=$runs/pretrain" ;;
    no_align)
      local off=("${no_align_overrides[@]}")
      stage no_align prealign "${off[@]}" && stage no_align pretrain "init_from=$runs/prealign" "${off[@]}" \
        && stage no_align sft "init_from=$runs/pretrain" "${off[@]}" ;;
    *) echo "unknown variant $v (full | no_prealign | no_align)"; return 2 ;;
  esac && evaluate "$v"
}

status=0
if [ "${PARALLEL:-0}" = 1 ]; then
  pids=()
  for v in "${variants[@]}"; do run_variant "$v" > "$RESULTS/$v.out" 2>&1 & pids+=($!); done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || status=1; cat "$RESULTS/${variants[$i]}.out"; done
else
  for v in "${variants[@]}"; do run_variant "$v" || status=1; done
fi
exit $status
