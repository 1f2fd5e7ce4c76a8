#!/usr/bin/env bash
# Generic SLURM batch script for two 8-A100 nodes: one task per GPU, Lightning reads the SLURM environment and
# does not start processes itself. Hydra overrides pass through "$@":
#   sbatch experiments/launchers/sbatch_2x8_a100.sh experiment=eve7b_pretrain_r672 init_from=/runs/prealign/export
#SBATCH --job-name=eve_lightning
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=3-00:00:00
#SBATCH --signal=SIGUSR1@120
#SBATCH --requeue
#SBATCH --output=logs/slurm/%x-%j.out
set -euo pipefail
mkdir -p logs/slurm
export NCCL_ASYNC_ERROR_HANDLING=1
# Every rank composes the same config; the run dir is keyed by SLURM_JOB_ID, so all ranks (and a requeued job)
# share it.
srun --kill-on-bad-exit=1 python -m eve_lightning.train cluster=a100_2x8 "$@"
