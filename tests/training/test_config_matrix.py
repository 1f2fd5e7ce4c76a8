"""Every shipped recipe composes with every cluster preset and builds its runtime objects (tiny model stand-in)."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.utils.config_checks import ConfigError, accumulation, available, validate
from tests.helpers.repo_paths import CONF
from tests.helpers.runs import compose_train

EXPERIMENTS = {  # experiment -> extra overrides (the stage for recipes that do not set their own)
    "demo": ["+stage=prealign"],
    "demo_recipe": ["+stage=pretrain"],
    "eve7b_prealign_r672": [],
    "eve7b_pretrain_r672": [],
    "eve7b_sft_r672": [],
    "eve7b_sft_r1344_hd": [],
    "evev2_7b": ["+stage=evev2_s1_0"],
}
EXPECTED_ACCUMULATION = {  # on two 8-GPU nodes: global batch / (micro batch x 16)
    "eve7b_prealign_r672": 2,
    "eve7b_pretrain_r672": 2,
    "eve7b_sft_r672": 2,
    "eve7b_sft_r1344_hd": 4,
    "evev2_7b": 16,  # stage 1.0: 1024 / (4 x 16)
}


def test_the_matrix_covers_every_shipped_file():
    assert sorted(EXPERIMENTS) == available("experiment")
    assert available("cluster") == ["a100_1x8", "a100_2x8", "cpu", "gpu1"]
    assert available("stage") == [
        *["evev2_s0", "evev2_s1_0", "evev2_s1_1", "evev2_s2", "evev2_sft"],
        *["prealign", "pretrain", "sft", "sft_hd"],
    ]
    assert available("strategy") == ["auto", "ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"]


@pytest.mark.parametrize("cluster", ["cpu", "gpu1", "a100_1x8", "a100_2x8"])
@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_recipe_x_cluster_composes_and_builds(tmp_path, experiment, cluster):
    tiny = "model=evev2_tiny" if experiment.startswith("evev2") else "model=tiny"
    cfg = compose_train(
        [f"experiment={experiment}", f"cluster={cluster}", tiny, *EXPERIMENTS[experiment]],
        tmp_path,
        tmp_path / "data",
        fast=False,
    )
    if experiment.startswith("demo") and cluster.startswith("a100"):
        cfg.global_batch_size = cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.num_nodes
    acc = validate(cfg)
    if cluster == "a100_2x8" and experiment in EXPECTED_ACCUMULATION:
        assert acc == EXPECTED_ACCUMULATION[experiment]
        assert cfg.slurm.nodes == 2 and cfg.slurm.tasks_per_node == cfg.trainer.devices == 8
    OmegaConf.resolve(cfg)
    assert cfg.model.eve.image_size == (1344 if "r1344" in experiment else 800 if "evev2" in experiment else 672)
    data = instantiate(cfg.data, _convert_="all")
    assert data.sample_cfg.image_size == cfg.model.eve.image_size
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    assert {type(c).__name__ for c in callbacks} >= {"LastStepCheckpoint", "Throughput", "StageExport"}
    strategy = cfg.trainer.strategy
    if not isinstance(strategy, str):
        instantiate(strategy, _convert_="all")
    model = instantiate(cfg.module, _convert_="all").model_factory()  # the LitModule node, as training builds it
    assert model.vlm.config.max_length == cfg.model.eve.max_length
    assert data.accumulation == cfg.trainer.accumulate_grad_batches == acc


def test_demo_recipe_model_has_a_125m_decoder_and_a_small_teacher(tmp_path):
    cfg = compose_train(["experiment=demo_recipe", "+stage=prealign"], tmp_path, tmp_path / "data", fast=False)
    OmegaConf.resolve(cfg)
    assert cfg.model.llm.config.hidden_size == 768 and cfg.trainer.max_steps == 100
    assert cfg.compile.enabled and cfg.compile.teacher and cfg.model.llm.attn_implementation == "torch_varlen"
    assert cfg.data.packing.collate == "packed" and cfg.data.batch_size == cfg.global_batch_size == 64
    model = instantiate(cfg.model, _convert_="all")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 100e6 < count(model.vlm.llm) < 150e6
    assert count(model.teacher) < 20e6
    assert sorted(model.vlm.aligner.layer_indices) == [0, 4, 8, 12]


@pytest.mark.parametrize("res", ["r672", "r1344"])
def test_resolutions_set_canvas_and_length(tmp_path, res):
    stage = "+stage=sft_hd" if res == "r1344" else "+stage=sft"
    cfg = compose_train([stage, f"resolution={res}"], tmp_path, tmp_path / "data")
    validate(cfg)
    assert (cfg.model.eve.image_size, cfg.model.eve.max_length) == ((1344, 4096) if res == "r1344" else (672, 2048))
    assert cfg.data.image_size == cfg.model.eve.image_size and cfg.data.max_length == cfg.model.eve.max_length


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_strategy_presets_build_on_cpu(tmp_path, strategy):
    cfg = compose_train(["+stage=pretrain", f"strategy={strategy}"], tmp_path, tmp_path / "data")
    OmegaConf.resolve(cfg)
    obj = instantiate(cfg.trainer.strategy, _convert_="all")
    name = type(obj).__name__
    if strategy.startswith("deepspeed"):
        assert name == "DeepSpeedStrategy"
        assert obj.config["zero_optimization"]["stage"] == int(strategy[-1])
        assert obj.config["train_micro_batch_size_per_gpu"] == cfg.data.batch_size
    elif strategy == "fsdp":
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        assert name == "FSDPStrategy"
        assert obj.kwargs["use_orig_params"] is True
        assert obj.kwargs["auto_wrap_policy"].__class__.__name__ == "ModuleWrapPolicy"
        assert LlamaDecoderLayer in obj.kwargs["auto_wrap_policy"]._module_classes
    else:
        assert name == "DDPStrategy"


def test_accumulation_is_derived_from_topology(tmp_path):
    overrides = ["+stage=sft", "cluster=a100_2x8", "data.batch_size=4", "global_batch_size=128"]
    cfg = compose_train(overrides, tmp_path, tmp_path)
    assert accumulation(cfg) == 2
    # an interpolation, not a value written by the entry point: Trainer and data module read the same number
    assert validate(cfg) == cfg.trainer.accumulate_grad_batches == cfg.data.accumulation == 2
    assert OmegaConf.is_interpolation(cfg.trainer, "accumulate_grad_batches")
    cfg.data.batch_size = 8  # follows a later change
    assert cfg.trainer.accumulate_grad_batches == cfg.data.accumulation == 1


def test_accumulation_set_by_hand_against_the_global_batch_is_refused(tmp_path):
    cfg = compose_train(["+stage=sft", "trainer.accumulate_grad_batches=3"], tmp_path, tmp_path)
    with pytest.raises(ConfigError, match=r"trainer.accumulate_grad_batches=3 but global_batch_size / .* = 2: the"):
        validate(cfg)


@pytest.mark.parametrize(("align_weight", "teacher_view"), [("1.0", True), ("0", False), ("0.0", False)])
def test_the_teacher_view_follows_the_alignment_weight(tmp_path, align_weight, teacher_view):
    cfg = compose_train(["+stage=pretrain", f"model.eve.align_weight={align_weight}"], tmp_path, tmp_path)
    assert cfg.data.teacher_view is teacher_view
    OmegaConf.resolve(cfg)
    assert instantiate(cfg.data, _convert_="all").sample_cfg.teacher_view is teacher_view


def test_optuna_search_config_composes(tmp_path):
    cfg = compose_train(["+stage=sft", "hparams_search=sft_lr_optuna"], tmp_path, tmp_path)
    assert cfg.optimized_metric == "train/loss"
    assert (CONF / "hydra" / "launcher" / "submitit_eve.yaml").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.eve.ce_impl=fast"], r"model.eve.ce_impl=fast: use one of torch, fused, liger"),
        (["model.eve.ce_impl=fused", "strategy=deepspeed_zero3"], r"ZeRO-3 partitions: use model.eve.ce_impl=torch"),
        (["model.fp8=fp4"], r"model.fp8=fp4: use one of tensorwise, rowwise, rowwise_with_gw_hp, or null"),
    ],
)
def test_loss_and_fp8_switches_are_checked_at_start_up(tmp_path, overrides, message):
    cfg = compose_train(["+stage=pretrain", *overrides], tmp_path, tmp_path)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_fp8_on_a_machine_without_an_fp8_gpu_is_a_config_error_naming_the_fix(tmp_path):
    cfg = compose_train(["+stage=pretrain", "model.fp8=tensorwise"], tmp_path, tmp_path)
    with pytest.raises(ConfigError, match=r"no CUDA device here: set model.fp8=null"):
        validate(cfg)
    assert validate(compose_train(["+stage=pretrain", "model.eve.ce_impl=fused"], tmp_path, tmp_path)) >= 1
