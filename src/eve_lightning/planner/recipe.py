"""The planner's recipes and how a stage's training config is composed (as ``eve_lightning.train`` would).

A recipe is a list of stages, each a ``conf/experiment`` name with the overrides that pick its stage (EVEv2's
``experiment=evev2_7b`` holds its five stages, chosen with ``+stage=evev2_*``), planned on the path our throughput
was measured on (``RECIPE_PATH``); ``compose_stage`` composes ``conf/train.yaml`` with an experiment and its
overrides, without a Hydra run and without writing anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from eve_lightning.models import attention
from eve_lightning.utils.config_checks import CONF_DIR  # importing it registers the config resolvers

EVEV2_STAGES = ("evev2_s0", "evev2_s1_0", "evev2_s1_1", "evev2_s2", "evev2_sft")
# recipe -> its stages: (experiment, the overrides that select the stage)
RECIPES: dict[str, list[tuple[str, list[str]]]] = {
    "eve7b": [("eve7b_prealign_r672", []), ("eve7b_pretrain_r672", []), ("eve7b_sft_r672", [])],
    "eve7b_hd": [("eve7b_prealign_r672", []), ("eve7b_pretrain_r672", []), ("eve7b_sft_r1344_hd", [])],
    # EVEv2-7B: 10M, 29M, 48M, 15M and 7.3M samples (conf/experiment/evev2_7b.yaml's steps x global batch)
    "evev2_7b": [("evev2_7b", [f"+stage={name}"]) for name in EVEV2_STAGES],
}
# What a recipe adds to its experiments: the settings of the path whose throughput was measured
# (throughput.MEASURED_PATH). ZeRO-3 refuses compiled blocks, hence FSDP. Overrides given on the command line
# come after these.
RECIPE_PATH = [
    "strategy=fsdp",
    "compile.enabled=true",
    f"{attention.CONFIG_KEY}={attention.VARLEN}",
    "data.packing.collate=packed",
]


def compose_stage(overrides: Sequence[str]) -> DictConfig:
    """The training config of ``conf/train.yaml`` with ``overrides`` (``experiment=...`` among them), unlocked."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=False)
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = "."  # the plan never writes; hydra:runtime is not set outside a Hydra run
    return cfg
