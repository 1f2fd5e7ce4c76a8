"""``order=global``: every optimizer step trains on the same samples whatever the ranks, workers and accumulation."""

from __future__ import annotations

import pytest

from eve_lightning.data.datamodule import EveDataModule
from eve_lightning.data.sharding import plan_global_order
from tests.helpers.streams import sft_stream

COUNTS = [7, 5, 9, 3]  # 24 samples in 4 shards of uneven sizes


def step_samples(world: int, workers: int, micro: int, accumulation: int) -> list[list[tuple[int, int]]]:
    """(shard, index) of the samples of every optimizer step, as the DataLoaders of all ranks deliver them."""
    plan = plan_global_order(
        COUNTS, world_size=world, num_workers=workers, batch_size=micro, accumulation=accumulation, seed=1, epoch=0,
        shuffle=True,
    )  # fmt: skip
    ranks = []
    for row in plan.slots:
        per_worker = []
        for slot in row:
            flat = [(p.shard, i) for p in slot.pieces for i in range(p.start, p.stop)]
            per_worker.append([[flat[int(k)] for k in batch] for batch in slot.batches])
        # the DataLoader takes one batch from each worker in turn
        ranks.append([per_worker[j % workers][j // workers] for j in range(plan.batches_per_rank)])
    steps = plan.batches_per_rank // accumulation
    return [
        sorted(s for rank in ranks for batch in rank[k * accumulation : (k + 1) * accumulation] for s in batch)
        for k in range(steps)
    ]


def test_the_steps_see_the_same_samples_on_any_layout():
    one_gpu = step_samples(world=1, workers=1, micro=8, accumulation=1)
    assert len(one_gpu) == 3 and len({s for step in one_gpu for s in step}) == 24  # 24 // 8 steps, no repeats
    for world, workers, micro, accumulation in [(2, 3, 4, 1), (2, 2, 2, 2), (4, 1, 1, 2), (8, 2, 1, 1)]:
        assert step_samples(world, workers, micro, accumulation) == one_gpu, (world, workers, micro, accumulation)
    assert step_samples(1, 1, 8, 1) != step_samples(1, 1, 8, 1)[::-1]  # steps differ from each other


def test_the_remainder_is_left_out_and_too_little_data_is_refused_by_name():
    assert len(step_samples(world=1, workers=1, micro=5, accumulation=1)) == 4  # 24 // 5 steps, 4 samples unused
    with pytest.raises(ValueError, match=r"24 samples cannot fill one global batch of 32 \(micro-batch 8 x 2 ranks"):
        plan_global_order(COUNTS, world_size=2, num_workers=1, batch_size=8, accumulation=2, seed=0, epoch=0,
                          shuffle=False)  # fmt: skip


def test_streams_of_two_ranks_give_the_one_rank_steps(demo_dir, tok):
    folder = demo_dir / "sft" / "train"
    opts = {"group_by_modality": False, "order": "global", "window": 1}

    def keys(world, workers, micro):
        streams = [sft_stream(folder, tok, r, world, workers, batch_size=micro, **opts) for r in range(world)]
        per_rank = []
        for stream in streams:
            by_worker = [list(stream.iter_worker(w)) for w in range(workers)]
            per_rank.append([by_worker[j % workers][j // workers] for j in range(len(stream))])
        return [sorted(k for rank in per_rank for k in rank[step]["meta"]["keys"]) for step in range(len(per_rank[0]))]

    one = keys(world=1, workers=1, micro=8)
    assert len(one) >= 3 and one == keys(world=2, workers=2, micro=4)


def test_global_order_turns_off_the_task_defaults_it_cannot_follow(demo_dir):
    dm = EveDataModule(
        str(demo_dir / "pretrain" / "train"), task="pretrain", stream={"order": "global"}, accumulation=2
    )
    assert not dm.resampled and not dm.group and dm.accumulation == 2
    with pytest.raises(ValueError, match=r"data\.stream\.order must be 'rank' or 'global'"):
        EveDataModule(str(demo_dir / "pretrain" / "train"), stream={"order": "by_rank"})
    with pytest.raises(ValueError, match=r"set data\.stream\.resampled=false and data\.stream\.group_by_modality"):
        sft_stream(demo_dir / "sft" / "train", None, 0, 1, 1, order="global")  # grouping on
