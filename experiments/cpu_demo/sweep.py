"""Choose the `make train` recipe: run variants of the three demo stages one after another on this machine, score
each on the held-out demo benchmark, and append one JSON line per variant to RESULTS/results.jsonl.

    python experiments/cpu_demo/sweep.py --out RESULTS [VARIANT ...]

A variant is a set of overrides on `experiment=demo` (VARIANTS below: steps per stage, then overrides for every
stage). Variants with the same `data.synthetic.*` options share one generated data set. Wall times are real: run it on
an otherwise idle machine, and one variant at a time (the default), since parallel runs on two cores slow each
other down far more than twofold (OpenMP threads and loader workers compete).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BASE = ["logger=csv", "trainer.enable_progress_bar=false", "callbacks.benchmark_val.every_n_steps=100000"]
# the data settings of the GPU demo recipe, at CPU scale
RICH = ["data.synthetic.max_turns=10", "data.synthetic.turns=independent", "data.synthetic.answers=restated",
        "data.synthetic.shuffled_captions=0.5", "data.synthetic.shape_first_captions=0.5"]  # fmt: skip
# short answers ('red.'): exact match needs one word, not a restated phrase
SHORT = [x.replace("restated", "short") for x in RICH]
VARIANTS: dict[str, tuple[dict[str, int], list[str]]] = {
    "smoke": ({"prealign": 2, "pretrain": 2, "sft": 2}, []),  # checks the script itself
    "current": ({"prealign": 60, "pretrain": 60, "sft": 60}, []),
    "rich_4k": ({"prealign": 50, "pretrain": 400, "sft": 800}, [*RICH, "data.synthetic.samples=4000"]),
    "rich_4k_lr3": ({"prealign": 50, "pretrain": 400, "sft": 800},
                    [*RICH, "data.synthetic.samples=4000", "demo_lr.pretrain=3e-3", "demo_lr.sft=3e-3"]),
    "rich_4k_w128": ({"prealign": 50, "pretrain": 400, "sft": 800},
                     [*RICH, "data.synthetic.samples=4000", "model.llm.config.hidden_size=128",
                      "model.llm.config.intermediate_size=256", "model.eve.vision_hidden=128"]),
    "short_4k_lr3": ({"prealign": 50, "pretrain": 400, "sft": 800},
                     [*SHORT, "data.synthetic.samples=4000", "demo_lr.pretrain=3e-3", "demo_lr.sft=3e-3"]),
    "short_4k_lr3_sft1400": ({"prealign": 50, "pretrain": 400, "sft": 1400},
                             [*SHORT, "data.synthetic.samples=4000", "demo_lr.pretrain=3e-3", "demo_lr.sft=3e-3"]),
    "short_4k": ({"prealign": 50, "pretrain": 400, "sft": 800}, [*SHORT, "data.synthetic.samples=4000"]),
    "rich_4k_long": ({"prealign": 50, "pretrain": 600, "sft": 1400}, [*RICH, "data.synthetic.samples=4000"]),
}  # fmt: skip


def run_variant(name: str, out: Path) -> dict:
    steps, extra = VARIANTS[name]
    root = out / name
    root.mkdir(parents=True, exist_ok=True)
    options = "".join(sorted(x for x in extra if x.startswith("data.synthetic.")))
    data = out / ("data_" + hashlib.sha1(options.encode()).hexdigest()[:8])
    env = {**os.environ, "EVE_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    result, prev, started = {"variant": name, "steps": steps, "overrides": extra}, None, time.time()
    for stage in ("prealign", "pretrain", "sft"):
        done = sorted((root / "logs" / "train" / "demo" / stage).glob("*/export/config.json"))
        if done:  # a rerun continues where the last one stopped
            prev = done[-1].parent
            continue
        args = [f"+stage={stage}", f"trainer.max_steps={steps[stage]}", f"paths.data_dir={data}", *BASE, *extra]
        args += [f"init_from={prev}"] if prev else []
        t = time.time()
        with open(root / f"{stage}.log", "w") as log:
            code = subprocess.call([sys.executable, "-m", "eve_lightning.train", *args], cwd=root, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        if code:
            return {**result, "failed": stage}
        result[f"{stage}_s"] = round(time.time() - t, 1)
        prev = next((root / "logs" / "train" / "demo" / stage).glob("*/export"))
    result["train_s"] = round(time.time() - started, 1)
    t = time.time()
    ev = subprocess.run([sys.executable, "-m", "eve_lightning.eval", "benchmark=demo", f"model={prev}",
                         f"data.root={data}/demo", "progress=false", "device=cpu"],
                        cwd=root, env=env, capture_output=True, text=True)  # fmt: skip
    if ev.returncode:
        return {**result, "failed": "eval", "stderr": ev.stderr[-500:]}
    metrics = json.loads(ev.stdout.strip().splitlines()[-1])["metrics"]
    keep = ("accuracy", "accuracy_colour", "accuracy_shape", "accuracy_colour_shape", "caption_accuracy")
    return {**result, "eval_s": round(time.time() - t, 1), **{k: metrics.get(k) for k in keep}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("variants", nargs="*", default=list(VARIANTS))
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        res = run_variant(name, out)
        print(json.dumps(res), flush=True)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
