"""Write real DeepSpeed ZeRO-2 and ZeRO-3 checkpoint folders of a tiny EVE model from 2 CPU ranks (gloo).

`python tests/helpers/zero_folders.py OUT [PORT]` writes OUT/zero2 and OUT/zero3 as Lightning's DeepSpeedStrategy
lays them out (the module under `_forward_module.`, our checkpoint config as client state), after one AdamW step with
two parameter groups, a frozen part and several ZeRO-3 sub-groups, and OUT/zero{2,3}.reference.pt: DeepSpeed's own
fp32 consolidation of each folder, the oracle the tests compare ours with. PORT: the ranks' rendezvous port (default:
a free one).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from torch import nn

CONF = Path(__file__).resolve().parents[2] / "conf"


def tiny_vlm() -> nn.Module:
    from hydra.utils import instantiate

    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    cfg["eve"]["align_weight"] = 0.0
    cfg["llm"]["config"]["vocab_size"] = 512  # small embeddings: partitions stay cheap on CPU
    torch.manual_seed(0)
    return instantiate(cfg, _convert_="all").vlm


class Holder(nn.Module):
    def __init__(self, **children: nn.Module) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


class LightningLike(nn.Module):
    """The module tree Lightning hands DeepSpeed: `_forward_module.model.vlm`, with a forward over one image row."""

    def __init__(self, vlm: nn.Module) -> None:
        super().__init__()
        self._forward_module = Holder(model=Holder(vlm=vlm))

    def forward(self, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        vlm = self._forward_module.model.vlm
        mask = torch.ones(pixels.shape[0], *pixels.shape[-2:], dtype=torch.uint8)
        return vlm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clamp(min=-100),
                   pixel_values=pixels, pixel_mask=mask).loss  # fmt: skip


def rank_main(rank: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", DS_ACCELERATOR="cpu")
    import deepspeed
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from eve_lightning.constants import IMAGE_TOKEN_INDEX

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # a CPU op: nothing to build
    deepspeed.init_distributed(dist_backend="gloo")
    for stage in (2, 3):
        vlm = tiny_vlm()
        wrapper = LightningLike(vlm)
        for p in vlm.llm.model.embed_tokens.parameters():
            p.requires_grad_(False)  # frozen parameters travel in the model-states files
        vision = [p for n, p in vlm.named_parameters() if p.requires_grad and not n.startswith("llm.")]
        text = [p for n, p in vlm.named_parameters() if p.requires_grad and n.startswith("llm.")]
        opt = torch.optim.AdamW([{"params": vision, "lr": 1e-2}, {"params": text, "lr": 1e-3}])
        zero = {"stage": stage, "sub_group_size": 20000}  # ZeRO-3: several flat sub-groups per rank
        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": zero, "zero_allow_untested_optimizer": True}
        engine, *_ = deepspeed.initialize(model=wrapper, optimizer=opt, config=config)
        gen = torch.Generator().manual_seed(rank)
        ids = torch.cat([torch.tensor([[1, IMAGE_TOKEN_INDEX]]), torch.randint(3, 500, (1, 10), generator=gen)], 1)
        pixels = torch.randint(0, 256, (1, 3, 672, 672), generator=gen, dtype=torch.uint8)
        engine.backward(engine(ids, pixels))
        engine.step()
        client = {
            "eve_lightning_config": {"eve": vlm.config.to_dict(), "llm": vlm.llm.config.to_dict(), "tokenizer": None},
            "global_step": 1,
        }
        folder = Path(out) / f"zero{stage}"
        engine.save_checkpoint(str(folder), tag="checkpoint", client_state=client)
        torch.distributed.barrier()
        if rank == 0:
            ref = get_fp32_state_dict_from_zero_checkpoint(str(folder))
            torch.save({k.removeprefix("_forward_module."): v for k, v in ref.items()}, f"{folder}.reference.pt")
        torch.distributed.barrier()
        engine.destroy()
    # A rank that exits with the process group alive can abort in the backend's threads ("terminate called without
    # an active exception"): take the group down before returning.
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(CONF.parent))  # the repository root, for tests.helpers
    from tests.helpers.ports import free_port

    # the ranks' rendezvous port: never a fixed one, tests run in parallel workers
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2] if len(sys.argv) > 2 else str(free_port()))
    mp.spawn(rank_main, args=(sys.argv[1],), nprocs=2)
    print("ok")
