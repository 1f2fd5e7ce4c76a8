"""One CPU rank of DeepSpeed ZeRO-3 (gloo): load an export into a model built partitioned, as Lightning builds it.

``python tests/helpers/zero3_init_from.py EXPORT PORT with|without OUT``: builds the tiny EVEv2 (seed 0) inside
``deepspeed.zero.Init`` (Lightning's ``model_sharded_context`` under ZeRO-3), then loads EXPORT and runs the copy
step, through ``lit.zero3.writable_weights`` (``with``) or straight into the partitions (``without``: the load
fails with a size mismatch), and saves the gathered weights to OUT.
"""

from __future__ import annotations

import importlib
import os
import sys

import torch


def main(export: str, port: str, mode: str, out: str) -> None:
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                      DS_ACCELERATOR="cpu")  # fmt: skip
    import deepspeed

    from eve_lightning.lit.zero3 import is_partitioned, writable_weights
    from eve_lightning.models.evev2.decoder import copy_text_to_vision
    from eve_lightning.models.export_format import load_export_weights
    from tests.helpers.official_checkpoint_v2 import tiny_evev2

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # a CPU op: nothing to build
    deepspeed.init_distributed(dist_backend="gloo")
    from eve_lightning.lit.eve_module import hf_zero3_config

    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    hf = hf_zero3_config(type("Strategy", (), {"config": config})())  # noqa: F841  (as EveLitModule keeps it alive)
    with deepspeed.zero.Init(config_dict_or_path=config):
        vlm = tiny_evev2(seed=0)
    assert is_partitioned(vlm)
    context = writable_weights(vlm) if mode == "with" else torch.no_grad()
    with context, torch.no_grad():
        load_export_weights(export, vlm)
        copy_text_to_vision(vlm)
    with deepspeed.zero.GatheredParameters(list(vlm.parameters())):
        torch.save({n: p.detach().clone() for n, p in vlm.named_parameters()}, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
