"""Names of runs, and the config resolvers that compute them (registered on import).

`${eve_cwd:}` is the launch directory, `${eve_run_id:}` the run directory's name and
`${eve_run_name:<experiment>,<stage>}` the loggers' run name. Everything that composes `conf/train.yaml` imports
this module (through `utils.config_checks`), so the config resolves the same in training, planning and tests.
"""

from __future__ import annotations

import functools
import os
import sys
from datetime import datetime

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

# The launch directory, usable where ${hydra:...} is not (Hydra resolves the sweep dir before its config is set).
OmegaConf.register_new_resolver("eve_cwd", os.getcwd, replace=True)


@functools.cache
def run_id() -> str:
    """Name of this job's run directory.

    Under SLURM it is `slurm-<job id>`, so a requeued job finds its own run dir and resumes from its checkpoint;
    otherwise a microsecond timestamp (parallel local starts never collide).
    """
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (f"_{task}" if task else "")
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f") + "_local"


OmegaConf.register_new_resolver("eve_run_id", run_id, replace=True)


def run_name(experiment: str, stage: str) -> str:
    """Logger run name: `<experiment>-<stage>-<where>`, distinct for every job and every point of a sweep.

    `<where>` is the SLURM job (and array task) id, else `local`; in a multirun the job number and the point's
    overrides (the stage left out) follow, e.g. `demo-sft-local-1-optim.lr=2e-05`.
    """
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    name = f"{experiment}-{stage}-" + (f"{job}_{task}" if job and task else job or "local")
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    if hc is not None and hc.mode == RunMode.MULTIRUN:
        swept = swept_keys(sys.argv[1:]) | set((hc.sweeper.get("params") or {}).keys())
        point = ",".join(o for o in hc.overrides.task if o.lstrip("+~").partition("=")[0] in swept)
        name += f"-{hc.job.num}" + (f"-{point}" if point else "")
    return name[:128]


def swept_keys(argv: list[str]) -> set[str]:
    """Keys a command line sweeps: `optim.lr=1e-5,2e-5`, `seed=range(3)`, `model=choice(a,b)`."""
    keys = set()
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and ("," in value or value.startswith(("range(", "choice(", "interval(", "glob("))):
            keys.add(key)
    return keys


OmegaConf.register_new_resolver("eve_run_name", run_name, replace=True)
