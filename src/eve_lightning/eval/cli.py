"""Evaluation entry point: ``python -m eve_lightning.eval benchmark=<name> [model=DIR] [data.root=DIR] [...]``.

Composes ``conf/eval.yaml`` with ``conf/benchmark/<name>.yaml``, loads the benchmark's questions from its public
files, answers them with batched greedy generation (one worker process per GPU when several are visible),
appending every batch to ``output_dir/answers.jsonl``, scores them, writes ``results.json`` (and the submission
file where the benchmark has one) and prints the metrics as one JSON line, the last line of stdout. Running the
same command again resumes: questions already answered are not asked again. Configuration and data problems
end the process with one line on stderr and exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from eve_lightning.eval.base import BenchmarkDataError, Question, write_json
from eve_lightning.eval.registry import UnknownBenchmarkError, build_benchmark
from eve_lightning.eval.runner import answer_files, read_answers, run_parallel, run_questions
from eve_lightning.inference.loading import check_model
from eve_lightning.utils.config_checks import CONF_DIR, ConfigError
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)
RUN_KEY_FILE = "run.json"
RESULTS_FILE = "results.json"


def model_tag(model: str) -> str:
    """A folder name for a model path: its last two components (``runs/demo/latest`` -> ``demo_latest``)."""
    parts = [p for p in Path(str(model)).parts[-2:] if p not in ("/", "")]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)) or "model"


OmegaConf.register_new_resolver("eve_cwd", os.getcwd, replace=True)
OmegaConf.register_new_resolver("eve_model_tag", model_tag, replace=True)


def model_fingerprint(path: Path) -> str:
    """Names, sizes and modification times of a model's files, hashed: changes when the weights are rewritten."""
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.iterdir() if p.is_file())
        last = path / "checkpoints" / "last.ckpt"
        files += [last] if last.exists() else []
    items = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha1(json.dumps(items).encode()).hexdigest()[:16]


def template_name(template: str | None) -> str:
    """The chat template as recorded in the results (None: the model family's, ``vicuna_v1`` or ``qwen2``)."""
    return template or "model family default (vicuna_v1 for EVE v1, qwen2 for EVEv2)"


def apply_limit(questions: list[Question], limit: int | None) -> list[Question]:
    """The first ``limit`` questions, plus the rest of their groups (an MME pair or MMBench rotations stay whole)."""
    if limit is None or limit >= len(questions):
        return questions
    if limit < 1:
        raise ConfigError(f"limit must be a positive number of questions, got {limit}")
    keep = {q.group or q.qid for q in questions[:limit]}
    return [q for q in questions if (q.group or q.qid) in keep]


def check_run_key(out_dir: Path, key: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix answers of another model or other settings into ``out_dir`` (``overwrite`` starts over)."""
    path = out_dir / RUN_KEY_FILE
    if overwrite:
        for f in [*answer_files(out_dir), path, out_dir / RESULTS_FILE]:
            f.unlink(missing_ok=True)
    elif path.is_file() and answer_files(out_dir):
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
        if changed:
            raise ConfigError(
                f"{out_dir} holds answers of another run (different {', '.join(changed)}): pass overwrite=true to "
                "start over, or another output_dir="
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, key)


def _devices(cfg: DictConfig) -> list[str]:
    from eve_lightning.eval.generation import resolve_device

    device = resolve_device(cfg.device)
    count = cfg.devices
    if count in ("auto", None):
        import torch

        count = torch.cuda.device_count() if device == "cuda" else 1
    count = max(1, int(count))
    if count == 1:
        return [device]
    return [f"cuda:{i}" for i in range(count)] if device == "cuda" else [device] * count


def answer_all(cfg: DictConfig, questions: list[Question], out_dir: Path, desc: str) -> dict[str, str]:
    """Answer the questions without an answer in ``out_dir`` (the model is loaded only when some remain)."""
    done = read_answers(out_dir)
    if all(q.qid in done for q in questions):
        log.info("every question already has an answer in %s: scoring only", out_dir)
        return {q.qid: done[q.qid] for q in questions}
    from eve_lightning.eval.generation import load_answerer

    factory = partial(
        load_answerer,
        model=str(cfg.model_path),
        template=cfg.template,
        dtype=cfg.dtype,
        max_new_tokens=int(cfg.max_new_tokens),
        threads=int(cfg.threads),
    )
    devices = _devices(cfg)
    batch_size = int(cfg.batch_size)
    if len(devices) > 1:
        log.info("answering with %d worker processes on %s", len(devices), ", ".join(devices))
        return run_parallel(questions, factory, devices, out_dir, batch_size, bool(cfg.progress), desc)
    answerer = factory(devices[0])
    engine = answerer.engine
    log.info("model %s (%s, %d px) on %s", cfg.model_path, engine.loaded.kind, engine.image_size, engine.device)
    try:
        return run_questions(questions, answerer, out_dir, batch_size, bool(cfg.progress), desc)
    finally:
        answerer.close()


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Validate the config, answer the benchmark's questions (resuming), score and write the results.

    Returns:
        The results (also written to ``output_dir/results.json``).

    Raises:
        ConfigError: a missing model or data file, an unknown benchmark or option, or answers of another run.
    """
    started = time.perf_counter()
    OmegaConf.resolve(cfg)
    model = Path(cfg.model_path)
    if not model.exists():
        default = Path(cfg.paths.runs_dir) / "demo" / "latest"
        hint = "run `make train` first, or pass model=DIR" if model == default else "check model="
        raise ConfigError(f"model {model} does not exist: {hint}")
    try:
        check_model(model)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"cannot load a model from {model}: {err}") from None
    options = OmegaConf.to_container(cfg.benchmark)
    name = options.pop("name")
    try:
        bench = build_benchmark(name, cfg.data.root, options)
        questions = apply_limit(bench.load(), cfg.limit)
    except UnknownBenchmarkError as err:
        raise ConfigError(str(err)) from None
    except BenchmarkDataError as err:
        raise ConfigError(f"{err} (benchmark {name}, data.root={cfg.data.root})") from None
    out_dir = Path(cfg.output_dir)
    key = {
        "benchmark": name,
        "options": options,
        "data_root": str(Path(cfg.data.root).resolve()),
        "model": str(model.resolve()),
        "weights": model_fingerprint(model),
        "template": cfg.template,
        "dtype": cfg.dtype,
        "max_new_tokens": int(cfg.max_new_tokens),
    }
    check_run_key(out_dir, key, bool(cfg.overwrite))
    log.info("%s (%s): %d questions -> %s", name, bench.split, len(questions), out_dir)
    answers = answer_all(cfg, questions, out_dir, desc=f"{name} {bench.split}")
    scores = bench.score(questions, answers)
    submission = bench.write_submission(questions, answers, out_dir)
    results = {
        "benchmark": name,
        "split": bench.split,
        "model": str(model),
        "data_root": str(cfg.data.root),
        "metrics": scores.metrics,
        "counts": {"asked": len(questions), "answered": len(answers), **scores.counts},
        "notes": scores.notes,
        "answers": str(out_dir / "answers.jsonl"),
        "submission": str(submission) if submission else None,
        "generation": {
            "template": template_name(cfg.template),
            "max_new_tokens": int(cfg.max_new_tokens),
            "greedy": True,
        },
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    results["results"] = str(write_json(out_dir / RESULTS_FILE, results))
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return results


def report(results: dict[str, Any]) -> None:
    """Human summary on stderr; the metrics as one JSON line, the last line of stdout."""
    lines = [f"{results['benchmark']} ({results['split']}): {results['counts']}"]
    lines += [f"  {k}: {v}" for k, v in results["metrics"].items()]
    lines += [f"  note: {n}" for n in results["notes"]]
    if results["submission"]:
        lines.append(f"  submission: {results['submission']}")
    lines.append(f"  results: {results['results']}")
    print("\n".join(lines), file=sys.stderr, flush=True)
    keys = ("benchmark", "split", "metrics", "counts")
    print(json.dumps({k: results[k] for k in keys}), flush=True)


def alias_overrides(args: list[str]) -> list[str]:
    """Read ``model=DIR`` as ``model_path=DIR``.

    ``model`` is the training config group (conf/model), so Hydra would take ``model=DIR`` for a group choice.
    """
    return [f"model_path={a[len('model=') :]}" if a.startswith("model=") else a for a in args]


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def hydra_main(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra entry point; configuration errors end the process with one line on stderr and exit code 2."""
    try:
        results = evaluate(cfg)
    except ConfigError as err:
        print(f"eve_lightning.eval: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    report(results)
    return results["metrics"]


def main() -> dict[str, Any] | None:
    """Command line: ``model=DIR`` aliased (see ``alias_overrides``), then Hydra."""
    sys.argv = [sys.argv[0], *alias_overrides(sys.argv[1:])]
    return hydra_main()
