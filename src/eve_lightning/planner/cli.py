"""The planner's command line: plan a recipe before running it (per-GPU memory, projected days of every stage).

    python -m eve_lightning.plan recipe=eve7b cluster=a100_2x8            # the three EVE-7B stages
    python -m eve_lightning.plan recipe=eve7b_hd cluster=a100_2x8         # ... with the 1344 px HD SFT
    python -m eve_lightning.plan recipe=evev2_7b cluster=a100_2x8         # the five EVEv2-7B stages
    python -m eve_lightning.plan experiment=eve7b_sft_r672 cluster=a100_2x8 strategy=fsdp data.batch_size=8

A recipe plans its experiments on the path our throughput was measured on (``planner.recipe.RECIPE_PATH``: FSDP,
compiled blocks, ``torch_varlen``, packed rows); ``experiment=`` plans a config as it is. Any training override
composes as it does for ``eve_lightning.train``. Planner options: ``plan.mfu.<stage>=F`` or ``plan.mfu=F`` (decoder
MFU to project with instead of the measured one, in the benchmark's count, the LM head at supervised positions only,
and read with the measured run's checkpointing: every block for the trained 7B stages, none for the others),
``plan.scaling_efficiency=F``, ``plan.tokens_per_sample.<pretrain|sft>=N``. Nothing is loaded: the model is built
on the meta device from its config (or the published shape when the config points to a checkpoint folder that is
not there), so the plan runs anywhere. Every assumption is printed with the plan.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from eve_lightning.planner.recipe import RECIPE_PATH, RECIPES, compose_stage
from eve_lightning.planner.report import ASSUMPTIONS, EVEV2_ASSUMPTIONS, format_plan
from eve_lightning.planner.stage import StagePlan, plan_stage

USAGE = f"""usage: python -m eve_lightning.plan (recipe=NAME | experiment=NAME ...) [cluster=NAME] [OVERRIDE ...]
                                  [plan.OPTION=VALUE ...]

Per-GPU memory and projected days of training stages, before running them. Nothing is loaded or written.

  recipe=NAME        eve7b (prealign, pretrain, SFT at 672 px) | eve7b_hd (SFT at 1344 px) | evev2_7b (the five
                     EVEv2 stages), planned on the path the throughput was measured on: {" ".join(RECIPE_PATH)}
  experiment=NAME    a conf/experiment config, planned as it is (repeatable)
  cluster=NAME       a100_2x8 | a100_1x8 | gpu1: the GPU count and perf.peak_tflops
  OVERRIDE           any training override, e.g. data.batch_size=8 gradient_checkpointing=false
  plan.mfu.<stage>=F                          decoder MFU to project a stage with (plan.mfu=F: every stage), in
                                              place of the measured one and with its run's checkpointing; the
                                              benchmark's mfu (the LM head counted at supervised positions only)
  plan.scaling_efficiency=F                   throughput kept per GPU on several GPUs (default 0.9)
  plan.tokens_per_sample.<pretrain|sft>=N     tokens per sample (image + text) instead of the benchmark's mean
  -h, --help         this help

The measured figures and their runs: src/eve_lightning/planner/throughput.py, benchmarks/README.md.
"""


def split_args(argv: Sequence[str]) -> tuple[list[tuple[str, list[str]]], list[str], dict[str, Any]]:
    """(experiments with the overrides they bring, training overrides, planner options) from ``key=value``.

    A recipe's experiments bring ``RECIPE_PATH``; ``experiment=`` brings nothing.
    """
    experiments: list[tuple[str, list[str]]] = []
    overrides: list[str] = []
    options: dict[str, Any] = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        if arg.startswith("-"):
            raise SystemExit(f"unknown option {arg!r}: arguments are key=value (python -m eve_lightning.plan --help)")
        if key == "recipe":
            if value not in RECIPES:
                raise SystemExit(f"unknown recipe {value!r}: one of {sorted(RECIPES)}")
            experiments += [(e, [*extra, *RECIPE_PATH]) for e, extra in RECIPES[value]]
        elif key == "experiment":
            experiments.append((value, []))
        elif key.startswith("plan."):
            node = options
            *path, leaf = key[len("plan.") :].split(".")
            for p in path:
                node = node.setdefault(p, {})
            node[leaf] = float(value)
        else:
            overrides.append(arg)
    if not experiments:
        raise SystemExit(
            "name what to plan: recipe=eve7b | recipe=eve7b_hd | recipe=evev2_7b | experiment=<conf/experiment name>"
        )
    return experiments, overrides, options


def main(argv: Sequence[str] | None = None) -> list[StagePlan]:
    """Plan what ``argv`` (default: the command line) names, print the plan and return its stages."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(USAGE)
        return []
    experiments, overrides, options = split_args(args)
    plans = [plan_stage(compose_stage([f"experiment={e}", *extra, *overrides]), e, options) for e, extra in experiments]
    recipes = [a.partition("=")[2] for a in args if a.startswith("recipe=")]
    recipe = recipes[0] if len(recipes) == 1 and len(experiments) == len(RECIPES[recipes[0]]) else None
    assumptions = ASSUMPTIONS + (EVEV2_ASSUMPTIONS if any(p.family == "evev2" for p in plans) else [])
    print(format_plan(plans, assumptions, recipe, overrides))
    return plans
