"""One loader for every kind of EVE weights.

Kinds: our stage exports, our Lightning training checkpoints (DeepSpeed folders consolidated), and the official
checkpoint layouts of EVE v1 and EVEv2 (kind "official" for both; the family tells them apart).

`load_model(path)` returns an inference-ready EveVLM (no aligner, no teacher) or EveV2VLM, its tokenizer and the
canvas size (EVEv2: its ``max_size``) read from the weights' own config, never from a folder name or a side folder.
The model family comes from the config too (``family``: ``eve`` or ``evev2``; exports and checkpoints written before
the key are EVE v1).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eve_lightning.checkpoints.resume import check_resume_source
from eve_lightning.checkpoints.safe_load import safe_load
from eve_lightning.checkpoints.sharded_folders import (
    consolidate_deepspeed_folder,
    is_deepspeed_folder,
    is_fsdp_sharded_folder,
    refuse_fsdp_sharded,
)
from eve_lightning.data.tokenizer import TextTokenizer, load_tokenizer
from eve_lightning.models.eve_vlm import EveConfig, EveVLM
from eve_lightning.models.evev2 import (
    MOE_PARTS,
    EveV2Config,
    EveV2VLM,
    build_evev2_model,
    copy_text_to_vision,
    is_vision_parameter,
)
from eve_lightning.models.export_format import CONFIG_NAME, FORMAT, config_family, load_export_weights
from eve_lightning.models.llm import build_llm
from eve_lightning.models.official_import import check_weight_files, load_official_weights
from eve_lightning.models.official_import_v2 import (
    is_official_v2_config,
    load_official_v2_weights,
    official_v2_settings,
)
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)

CHECKPOINT_CONFIG_KEY = "eve_lightning_config"  # written into Lightning checkpoints by EveLitModule


@dataclass
class LoadedModel:
    """An inference-ready model.

    Attributes:
        vlm: EveVLM (without aligner) or EveV2VLM, in eval mode, on its device and dtype.
        tokenizer: the model's tokenizer.
        image_size: EVE canvas side (672 or 1344) from the model's config; EVEv2: its ``max_size`` (800 or 1600).
        kind: "export", "lightning_checkpoint" or "official".
        source: the path it was loaded from.
        family: "eve" (EVE v1) or "evev2"; None when made: read from the model's class.
    """

    vlm: EveVLM | EveV2VLM
    tokenizer: TextTokenizer
    image_size: int
    kind: str
    source: str
    family: str | None = None

    def __post_init__(self) -> None:
        if self.family is None:
            self.family = "evev2" if isinstance(self.vlm, EveV2VLM) else "eve"

    @property
    def context_length(self) -> int:
        return int(getattr(self.vlm.llm.config, "max_position_embeddings", self.vlm.config.max_length))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on GPU, float32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


_HF_BOOKKEEPING = ("architectures", "transformers_version", "dtype", "torch_dtype")


def _inference_vlm(llm_config: dict[str, Any], eve: dict[str, Any]) -> EveVLM:
    eve = {k: v for k, v in eve.items() if k in EveConfig.__dataclass_fields__}
    eve["align_weight"] = 0.0  # inference: no aligner, no teacher
    llm_config = {k: v for k, v in llm_config.items() if k not in _HF_BOOKKEEPING}
    return EveVLM(build_llm(config=llm_config), EveConfig(**eve))


def _inference_evev2(llm_config: dict[str, Any], eve: dict[str, Any], with_experts: bool = False) -> EveV2VLM:
    """An EVEv2 model built from recorded configs (random weights); ``with_experts``: vision copies of every part."""
    eve = {k: v for k, v in eve.items() if k in EveV2Config.__dataclass_fields__}
    if with_experts:
        eve["moe_parts"] = list(MOE_PARTS)
    # the decoder's expert layout and routing come from `eve`; the HF config's own copies are dropped
    skip = (*_HF_BOOKKEEPING, "moe_parts", "routing", "_name_or_path")
    llm_config = {k: v for k, v in llm_config.items() if k not in skip}
    return build_evev2_model({"config": llm_config}, eve).vlm


def _build_vlm(config: dict[str, Any], copy_experts: bool = False) -> EveVLM | EveV2VLM:
    """The inference model of a recorded config (``family``, ``llm``, ``eve``), with random weights."""
    family = config_family(config)
    if family == "evev2":
        return _inference_evev2(config["llm"], config["eve"], with_experts=copy_experts)
    if copy_experts:
        raise ValueError("copy_experts (the copy step into vision experts) is for EVEv2 models; this one is EVE v1")
    return _inference_vlm(config["llm"], config["eve"])


def _copy_experts(vlm: EveV2VLM) -> None:
    n = copy_text_to_vision(vlm)
    log.info("copy step: %d vision-expert tensors set to their text weights", n)


def _tokenizer_from(folder: Path, names: list[str] | None = None) -> TextTokenizer:
    for name in names or []:
        if (folder / name).is_file() and name.endswith(".model"):
            return load_tokenizer(folder / name)
    model_files = sorted(folder.glob("*.model*"))
    if (folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder)
    if model_files:
        return load_tokenizer(model_files[0])
    raise FileNotFoundError(f"no tokenizer in {folder}: expected tokenizer.model (or tokenizer.json)")


def _load_export(folder: Path, copy_experts: bool = False) -> tuple[EveVLM | EveV2VLM, TextTokenizer]:
    config = json.loads((folder / CONFIG_NAME).read_text())
    vlm = _build_vlm(config, copy_experts)
    load_export_weights(folder, vlm, allow_missing=is_vision_parameter if copy_experts else None)
    if copy_experts:
        _copy_experts(vlm)
    return vlm, _tokenizer_from(folder, config.get("tokenizer"))


def official_image_size(config: dict[str, Any]) -> int:
    """Canvas size of an official checkpoint: the trailing number of `mm_vision_tower` ('...-672' / '-1344')."""
    tower = str(config.get("mm_vision_tower", ""))
    match = re.search(r"(672|1344)$", tower)
    if not match:
        raise ValueError(
            f"cannot tell the image size of this official checkpoint from mm_vision_tower={tower!r}; "
            "pass image_size=672 or 1344"
        )
    return int(match.group(1))


def _load_official(folder: Path, image_size: int | None) -> tuple[EveVLM | EveV2VLM, TextTokenizer]:
    check_weight_files(folder)  # an unsafe or missing shard fails before a 7B model is built
    config = json.loads((folder / CONFIG_NAME).read_text())
    if is_official_v2_config(config):
        return _load_official_v2(folder, config, image_size)
    llm_config = {k: v for k, v in config.items() if not k.startswith("mm_") and not k.startswith("_")}
    for key in (
        "requires_cliploss",
        "use_mm_proj",
        "tune_mm_mlp_adapter",
        "image_aspect_ratio",
        "image_grid_pinpoints",
    ):
        llm_config.pop(key, None)
    llm_config["model_type"] = "llama"
    eve = {
        "image_size": image_size or official_image_size(config),
        "vision_hidden": int(config.get("mm_hidden_size", 1024)),
        "projector_type": config.get("mm_projector_type", "mlp2x_gelu"),
        "max_length": int(config.get("max_position_embeddings", 4096)),
    }
    vlm = _inference_vlm(llm_config, eve)
    report = load_official_weights(vlm, folder)
    log.info("official checkpoint %s: %s", folder, report.summary())
    return vlm, _tokenizer_from(folder)


def _load_official_v2(folder: Path, config: dict[str, Any], image_size: int | None) -> tuple[EveV2VLM, TextTokenizer]:
    """An official EVEv2 folder (BAAI/EVE-7B-HD-v2.0 layout): config, preprocessing facts and weights from it."""
    llm_config, eve, facts = official_v2_settings(folder, config)
    if image_size is not None:
        eve["image_size"] = image_size
    log.info(
        "official EVEv2 checkpoint %s: max_size %d, patch %d, merge %d, CLIP mean/std, from %s",
        folder,
        eve["image_size"],
        facts.patch_size,
        facts.merge_size,
        facts.source,
    )
    vlm = _inference_evev2(llm_config, eve)
    report = load_official_v2_weights(vlm, folder)
    log.info("official EVEv2 checkpoint %s: %s", folder, report.summary())
    return vlm, _tokenizer_from(folder)


def _load_lightning_checkpoint(path: Path, copy_experts: bool = False) -> tuple[EveVLM | EveV2VLM, TextTokenizer]:
    # a DeepSpeed folder is consolidated in memory, weights-only; nothing is written next to it
    ckpt = consolidate_deepspeed_folder(path) if path.is_dir() else safe_load(path)
    config = ckpt.get(CHECKPOINT_CONFIG_KEY) if isinstance(ckpt, dict) else None
    if config is None:
        raise ValueError(f"{path} has no {CHECKPOINT_CONFIG_KEY}: it was not written by eve_lightning's trainer")
    vlm = _build_vlm(config, copy_experts)
    state = {k.removeprefix("model.vlm."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.vlm.")}
    state = {k: v for k, v in state.items() if not k.startswith("aligner.")}
    result = vlm.load_state_dict(state, strict=not copy_experts)
    if copy_experts:
        missing = [k for k in result.missing_keys if not is_vision_parameter(k)]
        if missing or result.unexpected_keys:
            raise ValueError(f"{path} does not fit its own config: missing {missing[:5]}, {result.unexpected_keys[:5]}")
        _copy_experts(vlm)
    tokenizer = load_tokenizer(config.get("tokenizer")) if config.get("tokenizer") else load_tokenizer(None)
    return vlm, tokenizer


def find_kind(path: Path) -> str:
    """Which loader a path needs: "export", "official", "lightning_checkpoint"."""
    if path.is_file() and path.suffix in (".ckpt", ".pt"):
        return "lightning_checkpoint"
    if is_deepspeed_folder(path):
        return "lightning_checkpoint"  # DeepSpeed checkpoint folder
    if is_fsdp_sharded_folder(path):
        refuse_fsdp_sharded(path)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        config = json.loads((path / CONFIG_NAME).read_text())
        if config.get("format") == FORMAT:
            return "export"
        if any(k.startswith("mm_") for k in config) or config.get("model_type") == "eve":
            return "official"  # EVE v1 or EVEv2 (`is_official_v2_config`)
    if path.is_dir() and (path / "checkpoints" / "last.ckpt").exists():
        return "run_dir"
    raise ValueError(
        f"{path} is not an EVE model: expected a stage export (config.json from eve_lightning), an official EVE v1 "
        "or EVEv2 checkpoint folder, a training run folder or a .ckpt file"
    )


def _locate(path: Path) -> tuple[Path, str]:
    """(the file or folder to read, its kind); a training run folder stands for its `checkpoints/last.ckpt`."""
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist (run `make train` for the demo model)")
    kind = find_kind(path)
    if kind == "run_dir":
        return path / "checkpoints" / "last.ckpt", "lightning_checkpoint"
    return path, kind


def check_model(path: str | Path) -> str:
    """Tell which kind of model `path` is and prove its pickles load weights-only, without building anything.

    For start-up checks of long jobs (evaluation): a wrong or unsafe path fails in one line before any work.

    Returns:
        The kind, as `find_kind`.

    Raises:
        FileNotFoundError, ValueError: as `load_model`.
    """
    path, kind = _locate(Path(path))
    if kind == "lightning_checkpoint":
        check_resume_source(path)
    elif kind == "official":
        check_weight_files(path)
    return kind


def load_model(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    image_size: int | None = None,
    copy_experts: bool = False,
) -> LoadedModel:
    """Load any EVE weights for inference.

    Args:
        path: a stage export folder, an official EVE v1 or EVEv2 folder, a training run folder (its
            `checkpoints/last.ckpt`), or a Lightning `.ckpt` file (a DeepSpeed checkpoint folder is consolidated
            in memory). Every pickle is read weights-only (`checkpoints.safe_load`): none can run code.
        device: default cuda when available, else cpu.
        dtype: default bfloat16 on GPU, float32 on CPU.
        image_size: only for official checkpoints: EVE v1 whose config does not name it; EVEv2: overrides the
            ``max_size`` read from the folder.
        copy_experts: EVEv2 only: build the model with vision experts of every part and set them to copies of the
            text weights (the copy step between stages 0 and 1.0; the source may lack the experts).

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: not an EVE model; `UnsafeCheckpointError` / `TornCheckpointError` (both ValueErrors) for
            a file that holds code or is cut short.
    """
    path, kind = _locate(Path(path))
    if kind == "export":
        vlm, tok = _load_export(path, copy_experts)
    elif kind == "official":
        if copy_experts:
            raise ValueError(
                "copy_experts is for EVEv2 exports and training checkpoints; convert an official checkpoint with "
                "`python -m eve_lightning.export` first"
            )
        vlm, tok = _load_official(path, image_size)
    else:
        vlm, tok = _load_lightning_checkpoint(path, copy_experts)
    device = torch.device(device) if device is not None else default_device()
    vlm = vlm.to(device=device, dtype=dtype or default_dtype(device)).eval()
    family = "evev2" if isinstance(vlm, EveV2VLM) else "eve"
    return LoadedModel(vlm, tok, vlm.config.image_size, kind, str(path), family)
