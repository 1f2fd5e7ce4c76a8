# Sourced by run.sh and concurrency.sh: the demo data's settings, each default written once, as the two argument
# lists that must agree (the generator's flags and the training config's data.synthetic.* overrides), and the
# no_align variant's overrides. Defaults match conf/experiment/demo_recipe.yaml.
SAMPLES=${SAMPLES:-153600} MAX_TURNS=${MAX_TURNS:-10} TURNS=${TURNS:-independent} SHUFFLED=${SHUFFLED:-0.5}
ANSWERS=${ANSWERS:-restated} SHAPE_FIRST=${SHAPE_FIRST:-0.5}
HELD_OUT=400  # per task, as data.synthetic.held_out
# shellcheck disable=SC2034  # used by the scripts that source this file
gen_flags=(--num-pretrain "$SAMPLES" --num-sft "$SAMPLES" --num-val "$HELD_OUT" --max-turns "$MAX_TURNS"
           --turns "$TURNS" --shuffled-captions "$SHUFFLED" --answers "$ANSWERS" --shape-first-captions "$SHAPE_FIRST")
# shellcheck disable=SC2034
gen_overrides=("data.synthetic.samples=$SAMPLES" "data.synthetic.max_turns=$MAX_TURNS" "data.synthetic.turns=$TURNS"
               "data.synthetic.shuffled_captions=$SHUFFLED" "data.synthetic.answers=$ANSWERS"
               "data.synthetic.shape_first_captions=$SHAPE_FIRST")
# shellcheck disable=SC2034
no_align_overrides=(model.eve.align_weight=0 data.teacher_view=false)  # no aligner loss, no teacher forward
