"""Summarize a demo-recipe run (experiments/demo_recipe/run.sh) into results.json and one loss plot per stage.

    python experiments/demo_recipe/summarize.py --results demo_recipe_run/results [--out experiments/demo_recipe]

Reads, per variant folder of ``--results``: ``<stage>.metrics.csv`` (the CSV logger's file), ``<stage>.seconds``
(wall time of the stage command, start-up and export included), ``eval.json`` (last line: the metrics of
``python -m eve_lightning.eval benchmark=demo``). Writes ``results.json`` and ``loss_<stage>.png`` (every variant
that ran the stage, on one axis; needs matplotlib). Final losses are the mean of the last 5 logged values.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

STAGES = ("prealign", "pretrain", "sft")
VARIANTS = ("full", "no_prealign", "no_align")
LAST = 5  # logged values averaged into a "final" loss


def read_series(path: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of every row of a CSV-logger file that has ``key``."""
    out = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            value = row.get(key)
            if value not in (None, ""):
                out.append((int(row["step"]), float(value)))
    return out


def tail_mean(series: list[tuple[int, float]], n: int = LAST) -> float | None:
    values = [v for _, v in series[-n:] if math.isfinite(v)]
    return round(sum(values) / len(values), 4) if values else None


def recipe_config() -> dict:
    """conf/experiment/demo_recipe.yaml as plain data (scheduled steps, global batch)."""
    import yaml

    conf = Path(__file__).resolve().parents[2] / "conf" / "experiment" / "demo_recipe.yaml"
    return yaml.safe_load(conf.read_text())


def stage_summary(folder: Path, stage: str) -> dict | None:
    csv_path = folder / f"{stage}.metrics.csv"
    if not csv_path.is_file():
        return None
    recipe = recipe_config()
    loss = read_series(csv_path, "train/loss")
    with csv_path.open(newline="") as f:  # training rows carry the step index, evaluation rows the steps done
        rows = list(csv.DictReader(f))
    done = max((int(r["step"]) + (1 if r.get("train/loss") else 0) for r in rows if r.get("step")), default=0)
    out = {
        "wall_s": int((folder / f"{stage}.seconds").read_text()) if (folder / f"{stage}.seconds").is_file() else None,
        "steps": done,
        "scheduled_steps": recipe["recipe"]["steps"].get(stage),
        "first_loss": round(loss[0][1], 4) if loss else None,
        "final_loss": tail_mean(loss),
        "final_loss_ce": tail_mean(read_series(csv_path, "train/loss_ce")),
        "final_loss_align": tail_mean(read_series(csv_path, "train/loss_align")),
        "final_val_loss_ce": tail_mean(read_series(csv_path, "val/loss_ce"), 1),
        "peak_mem_gib": max((v for _, v in read_series(csv_path, "perf/peak_mem_gib")), default=None),
    }
    if out["wall_s"]:  # whole stage command: start-up, compilation, validation and export included
        out["samples_per_wall_s"] = round(done * int(recipe["global_batch_size"]) / out["wall_s"], 1)
    return out


def heldout(folder: Path) -> dict | None:
    """The issue's three held-out fractions plus every metric of the demo benchmark (percent)."""
    path = folder / "eval.json"
    if not path.is_file() or not path.read_text().strip():
        return None
    result = json.loads(path.read_text().strip().splitlines()[-1])
    m = result["metrics"]
    fraction = lambda key: round(m[key] / 100, 4) if key in m else None  # noqa: E731
    return {
        "color_shape_exact_match": fraction("accuracy_colour_shape"),
        "overall_exact_match": fraction("accuracy"),
        "caption_correct": fraction("caption_accuracy"),
        "questions": result["counts"].get("questions"),
        "captions": result["counts"].get("captions"),
        "metrics_percent": m,
    }


def variant_summary(folder: Path) -> dict:
    stages = {s: r for s in STAGES if (r := stage_summary(folder, s)) is not None}
    walls = [r["wall_s"] for r in stages.values() if r["wall_s"] is not None]
    return {"stages": stages, "train_wall_s": sum(walls), "heldout": heldout(folder)}


def plot(results_dir: Path, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    written = []
    for stage in STAGES:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        drawn = False
        for colour, variant in zip(("C0", "C1", "C2"), VARIANTS):
            path = results_dir / variant / f"{stage}.metrics.csv"
            if not path.is_file():
                continue
            for key, style in (("train/loss", "-"), ("train/loss_align", ":")):
                series = read_series(path, key)
                if series:
                    ax.plot(*zip(*series), style, color=colour, label=f"{variant} {key.split('/')[1]}")
                    drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set(xlabel="optimizer step", ylabel="loss", title=f"demo recipe: {stage}", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        target = out / f"loss_{stage}.png"
        fig.savefig(target)
        plt.close(fig)
        written.append(target)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, required=True, help="RESULTS folder of run.sh")
    p.add_argument("--out", type=Path, default=Path(__file__).parent, help="where results.json and PNGs go")
    args = p.parse_args()
    read = lambda name: (args.results / name).read_text().strip() if (args.results / name).is_file() else None  # noqa: E731
    variants = {v: variant_summary(args.results / v) for v in VARIANTS if (args.results / v).is_dir()}
    full = variants.pop("full", None)
    summary = {
        "card": read("card.txt"),
        "versions_torch_transformers_lightning": read("versions.txt"),
        "recipe": "conf/experiment/demo_recipe.yaml (model demo_125m, 672 px, global batch 64)",
        "final_loss_is": f"mean of the last {LAST} logged training losses of the stage",
        "data_generation": json.loads(read("generation.json") or "null"),  # the demo generator's parameters
        "data_wall_s": int(secs) if (secs := read("data.seconds")) else None,  # generation, once for all variants
        **(full or {}),
        "ablations": variants,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    for path in plot(args.results, args.out):
        print("wrote", path)
    print("wrote", args.out / "results.json")
    print(json.dumps({k: summary.get(k) for k in ("card", "train_wall_s", "heldout")}))


if __name__ == "__main__":
    main()
