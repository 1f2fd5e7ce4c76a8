"""Multi-GPU checks on one host: DDP, DeepSpeed ZeRO-3 and FSDP against one GPU, resume, frozen parts, scaling.

    python experiments/multi_gpu/run.py [--parts losses,resume,prealign,scaling] [--gpus N] [--root DIR]

Parts (every run is ``python -m eve_lightning.train``, as users start it; figures are read back from its CSV log):

* ``losses``: ``+stage=pretrain`` for ``--steps`` steps on 1 GPU (micro-batch = the global batch), then on N GPUs
  under each strategy (micro-batch = global / N), all with ``data.stream.order=global`` (the same samples every step on
  any layout) and the default global loss normalization. Per run: the loss of every step against the 1-GPU run,
  samples/s and rank 0's peak memory. Every run writes a checkpoint halfway and its stage export (safetensors).
* ``resume``: from the halfway checkpoint of the ZeRO-3 and FSDP runs, resume on N GPUs and on 1 GPU; the resumed
  steps' losses against the uninterrupted run. ZeRO-3 checkpoints are sharded folders: the 1-GPU resume gets a
  folder written by N ranks.
* ``prealign``: ``+stage=prealign`` under ZeRO-3 and FSDP from the 1-GPU run's export; the new export against that
  one, part by part: the decoder must be bit-identical, the patch embedding, projector and aligner must change.
* ``scaling``: ``model=eve_1b`` (packed rows, ``torch_varlen``, compiled blocks) under DDP on 1 and on N GPUs with
  the same micro-batch per GPU: samples/s and the scaling efficiency.

Writes ``RESULTS/summary.json`` and one JSON per run under ``RESULTS/runs/`` (``card``, ``n_gpus``, ``strategy``,
``samples_per_s``, ``peak_mem_gib``, the loss difference against 1 GPU, ...). ``--cpu`` runs a dry run of the
same procedure on CPU processes (gloo, DDP only, the tiny model) to check the script itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = ("ddp", "deepspeed_zero3", "fsdp")
SHARDED = ("deepspeed_zero3", "fsdp")


def card() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # the card name is informative only
        return "unknown"


class Runner:
    """Builds and runs training commands, and reads their logs back."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(args.root).resolve()
        self.results = self.root / "results"
        (self.results / "runs").mkdir(parents=True, exist_ok=True)
        self.logs = self.results / "logs"
        self.logs.mkdir(exist_ok=True)
        self.summary: dict[str, Any] = {"card": card(), "n_gpus": args.gpus, "runs": {}}
        if args.cpu:
            self.base = ["cluster=cpu", "model=tiny", "trainer.precision=32-true"]
        else:
            self.base = ["cluster=gpu1", f"model={args.model}"]
        self.base += [
            "logger=csv",
            f"paths.root_dir={self.root}",
            "trainer.enable_progress_bar=false",
            "trainer.val_check_interval=1000000",
            "trainer.limit_val_batches=0",
            "data.loader.num_workers=2",
            f"data.synthetic.samples={args.samples}",
            f"seed={args.seed}",
        ]
        if args.tokenizer:
            self.base.append(f"data.tokenizer={args.tokenizer}")
        for done in sorted((self.results / "runs").glob("*.json")):  # runs of an earlier call: parts build on them
            entry = json.loads(done.read_text())
            entry["_losses"] = {int(k): v for k, v in entry.pop("losses", {}).items()}
            self.summary["runs"][done.stem] = entry

    def train(self, name: str, overrides: list[str], timeout: int = 1800) -> Path | None:
        """Run one training command; returns its run dir (None if it failed: the log tail goes to the summary)."""
        cmd = [sys.executable, "-m", "eve_lightning.train", *self.base, f"experiment_name=mg_{name}", *overrides]
        env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
        log = self.logs / f"{name}.log"
        start = time.time()
        print(f"== {name}: {' '.join(cmd[3:])}", flush=True)
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
        text = log.read_text(errors="replace")
        run_dirs = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("run dir:")]
        entry = {"command": " ".join(cmd[3:]), "wall_s": round(time.time() - start, 1), "returncode": proc.returncode}
        self.summary["runs"][name] = entry
        if proc.returncode != 0 or not run_dirs:
            entry["error_tail"] = text.splitlines()[-25:]
            print(f"!! {name} failed (rc {proc.returncode}); see {log}", flush=True)
            return None
        return Path(run_dirs[-1])

    @staticmethod
    def metrics(run_dir: Path) -> dict[str, Any]:
        rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
        losses = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
        sps = [float(r["perf/samples_per_sec"]) for r in rows if r.get("perf/samples_per_sec")]
        mem = [float(r["perf/peak_mem_gib"]) for r in rows if r.get("perf/peak_mem_gib")]
        tail = sps[len(sps) // 2 :] or sps
        return {
            "losses": losses,
            "samples_per_s": round(statistics.median(tail), 2) if tail else None,
            "peak_mem_gib": round(max(mem), 2) if mem else None,
        }

    @staticmethod
    def loss_diff(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
        common = sorted(set(a) & set(b))
        if not common:
            return {"steps_compared": 0}
        diffs = [abs(a[s] - b[s]) for s in common]
        rel = [abs(a[s] - b[s]) / max(abs(b[s]), 1e-12) for s in common]
        return {"steps_compared": len(common), "max_abs_diff": max(diffs), "max_rel_diff": max(rel)}

    def record(
        self, name: str, run_dir: Path | None, compare: tuple[str, dict[int, float]] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Store a run's figures (and ``fields``) in the summary and its JSON; ``compare``: (key, losses) to diff."""
        entry = self.summary["runs"][name]
        if run_dir is not None:
            m = self.metrics(run_dir)
            entry |= {"run_dir": str(run_dir), "steps": len(m["losses"]), "samples_per_s": m["samples_per_s"]}
            entry |= {"peak_mem_gib_rank0": m["peak_mem_gib"], "export": (run_dir / "export").is_dir()}
            entry["_losses"] = m["losses"]
        if compare is not None:
            entry[compare[0]] = self.loss_diff(entry.get("_losses", {}), compare[1])
        entry |= fields
        out = {k: v for k, v in entry.items() if not k.startswith("_")}
        out = {"card": self.summary["card"], **out, "losses": entry.get("_losses", {})}
        (self.results / "runs" / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
        return entry

    def checkpoint(self, run_dir: Path, step: int) -> Path | None:
        found = sorted((run_dir / "checkpoints").glob(f"step-{step:07d}*"))
        return found[0] if found else None

    def universal(self, ckpt: Path) -> Path | None:
        """A ZeRO checkpoint folder converted to DeepSpeed's universal format (None if the conversion failed)."""
        out = ckpt.with_name(ckpt.name + ".universal")
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt / "checkpoint"),
               "--output_folder", str(out / "checkpoint"), "--inject_missing_state"]  # fmt: skip
        log = self.logs / f"universal_{ckpt.name}.log"
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, timeout=1800)
        self.summary.setdefault("universal_conversions", {})[str(ckpt)] = proc.returncode
        if proc.returncode != 0:
            return None
        (out / "latest").write_text("checkpoint")  # the tag the Lightning strategy saves and loads
        return out

    def sharded(self) -> list[str]:
        """The sharded strategies to resume and prealign with (the CPU dry run: DDP, to exercise the same steps)."""
        return ["ddp"] if self.args.cpu else [s for s in self.args.strategies if s in SHARDED]

    # ------------------------------------------------------------------------------------------------ parts
    def common(self, n: int, strategy: str) -> list[str]:
        a = self.args
        micro = a.global_batch // n
        out = [
            "+stage=pretrain",
            "data.stream.order=global",
            f"global_batch_size={a.global_batch}",
            f"data.batch_size={micro}",
            f"trainer.devices={n}",
            f"trainer.max_steps={a.steps}",
            f"callbacks.model_checkpoint.every_n_train_steps={a.steps // 2}",
        ]
        return out + ([f"strategy={strategy}"] if strategy != "single" else [])

    def losses(self) -> None:
        a = self.args
        base = self.record("pretrain_1gpu", self.train("pretrain_1gpu", self.common(1, "single")), n_gpus=1,
                           strategy="single")  # fmt: skip
        reference = base.get("_losses", {})
        for strategy in a.strategies:
            name = f"pretrain_{a.gpus}gpu_{strategy}"
            run = self.train(name, self.common(a.gpus, strategy))
            self.record(name, run, ("loss_vs_1gpu", reference), n_gpus=a.gpus, strategy=strategy)

    def resume(self) -> None:
        a = self.args
        half = a.steps // 2
        for strategy in self.sharded():
            full = self.summary["runs"].get(f"pretrain_{a.gpus}gpu_{strategy}", {})
            if not full.get("run_dir"):
                continue
            ckpt = self.checkpoint(Path(full["run_dir"]), half)
            for n in (a.gpus, 1):
                name = f"resume_{strategy}_{a.gpus}to{n}gpu"
                if ckpt is None:
                    self.summary["runs"][name] = {"error": f"no step-{half} checkpoint in {full['run_dir']}"}
                    continue
                over = [*self.common(n, strategy), f"ckpt_path={ckpt}"]
                run = self.train(name, over)
                if run is None and strategy == "deepspeed_zero3" and n != a.gpus:
                    # a ZeRO-3 folder of N ranks does not load on another number of ranks as it is: convert it to
                    # DeepSpeed's universal format (its shards merged per parameter) and load that
                    universal = self.universal(ckpt)
                    if universal is not None:
                        over = [*self.common(n, strategy), f"ckpt_path={universal}"]
                        run = self.train(name, [*over, "+trainer.strategy.config.checkpoint.load_universal=true"])
                        ckpt = universal
                self.record(
                    name, run, ("loss_vs_uninterrupted", full["_losses"]), n_gpus=n, strategy=strategy,
                    resumed_from=str(ckpt),
                )  # fmt: skip

    def prealign(self) -> None:
        a = self.args
        base = self.summary["runs"].get("pretrain_1gpu", {})
        if not base.get("run_dir"):
            return
        init = Path(base["run_dir"]) / "export"
        for strategy in self.sharded():
            name = f"prealign_{a.gpus}gpu_{strategy}"
            over = [*self.common(a.gpus, strategy), "+stage=prealign", f"init_from={init}", "trainer.max_steps=10"]
            over = [o for o in over if o != "+stage=pretrain"]
            run = self.train(name, over)
            try:
                parts = compare_exports(init, run / "export") if run is not None else None
            except Exception as err:  # a broken export must not stop the other parts
                parts = {"error": f"{type(err).__name__}: {err}"}
            self.record(name, run, n_gpus=a.gpus, strategy=strategy, max_abs_change_by_part=parts)

    def scaling(self) -> None:
        a = self.args
        if a.cpu:
            model = ["model=tiny"]
        else:
            model = ["model=eve_1b", "model.llm.attn_implementation=torch_varlen", "compile.enabled=true"]
        res = {}
        for n in (1, a.gpus):
            name = f"scaling_eve_1b_{n}gpu_ddp"
            over = [
                "+stage=pretrain",
                *model,
                "data.packing.collate=packed",
                f"data.packing.pack_length={a.pack_length}",
                f"data.batch_size={a.scaling_micro}",
                f"global_batch_size={a.scaling_micro * n}",
                f"trainer.devices={n}",
                f"trainer.max_steps={a.scaling_steps}",
                "callbacks.model_checkpoint.every_n_train_steps=100000",
                f"data.loader.num_workers={a.scaling_workers}",  # the loaders must keep up with eve_1b on every GPU
            ] + (["strategy=ddp"] if n > 1 else [])
            res[n] = self.record(name, self.train(name, over), n_gpus=n, strategy="ddp" if n > 1 else "single")
        one, many = res[1].get("samples_per_s"), res[a.gpus].get("samples_per_s")
        if one and many:
            self.summary["scaling_efficiency"] = round(many / (a.gpus * one), 4)


def compare_exports(before: Path, after: Path) -> dict[str, float]:
    """Largest absolute change per model part between two stage exports (safetensors).

    ``<part>`` compares the values as stored; ``<part> (vs bf16)`` compares with the earlier export rounded to
    bf16 first: DeepSpeed keeps its weights in bf16, so a frozen part it exports differs from a float32 export by
    that rounding only, and is 0 there.
    """
    from safetensors.torch import load_file

    def tensors(folder: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in sorted(folder.glob("model*.safetensors")):
            out |= load_file(str(f))
        return out

    a, b = tensors(before), tensors(after)
    parts: dict[str, float] = {}
    for key in sorted(set(a) & set(b)):
        if a[key].shape != b[key].shape:
            raise ValueError(f"{key}: shape {tuple(a[key].shape)} before, {tuple(b[key].shape)} after")
        part = key.split(".")[0]
        if not a[key].numel():
            continue
        before_v, after_v = a[key].float(), b[key].float()
        change = float((before_v - after_v).abs().max())
        rounded = float((before_v.bfloat16().float() - after_v).abs().max())
        parts[part] = max(parts.get(part, 0.0), change)
        parts[f"{part} (vs bf16)"] = max(parts.get(f"{part} (vs bf16)", 0.0), rounded)
    return parts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="losses,resume,prealign,scaling")
    p.add_argument("--gpus", type=int, default=None, help="GPUs of the multi-GPU runs (default: all visible)")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--root", default="multi_gpu_run")
    p.add_argument("--model", default="demo_125m", help="model of the loss, resume and prealign runs")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--samples", type=int, default=2048, help="demo samples per task (generated on first use)")
    p.add_argument("--scaling-micro", type=int, default=16, help="eve_1b micro-batch per GPU")
    p.add_argument("--scaling-steps", type=int, default=30)
    p.add_argument("--scaling-workers", type=int, default=6, help="data workers per GPU of the scaling runs")
    p.add_argument("--pack-length", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=os.environ.get("TOKENIZER"))
    p.add_argument("--cpu", action="store_true", help="dry run on CPU processes (gloo, DDP only, tiny model)")
    args = p.parse_args(argv)
    if args.gpus is None:
        import torch

        args.gpus = 2 if args.cpu else torch.cuda.device_count()
    if args.gpus < 2:
        p.error(f"needs 2 or more GPUs (found {args.gpus}); --cpu runs a dry run on 2 CPU processes")
    if args.global_batch % args.gpus:
        p.error(f"--global-batch {args.global_batch} is not a multiple of --gpus {args.gpus}")
    args.strategies = ["ddp"] if args.cpu else [s for s in args.strategies.split(",") if s]
    runner = Runner(args)
    for part in args.parts.split(","):
        getattr(runner, part)()
        summary = {k: v for k, v in runner.summary.items() if k != "runs"}
        runs = runner.summary["runs"].items()
        summary["runs"] = {n: {k: v for k, v in e.items() if not k.startswith("_")} for n, e in runs}
        (runner.results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
