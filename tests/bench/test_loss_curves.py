"""bench.loss_curves: the gap between two runs' loss curves, read from Lightning CSV metrics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from eve_lightning.bench import loss_curves


def write_metrics(path, losses, every=1, other_rows=True):
    """A CSVLogger-like metrics.csv: the loss every ``every`` steps, plus rows of other metrics with it empty."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "lr/base", "step", "train/loss", "val/loss"])
        for step, loss in enumerate(losses):
            if step % every == 0:
                w.writerow([0, 1e-3, step, loss, ""])
            if other_rows and step % 50 == 49:
                w.writerow([0, "", step, "", 2.5])  # a validation row: no training loss
    return path


def curve(n=300, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    steps = np.arange(n)
    return scale * (0.3 + 11 * np.exp(-steps / 20)) * (1 + 0.02 * rng.standard_normal(n))


def test_the_tail_gap_is_the_relative_gap_of_the_last_steps_means(tmp_path):
    base, other = curve(), curve(scale=1.03, seed=1)
    a = write_metrics(tmp_path / "a.csv", base)
    b = write_metrics(tmp_path / "b.csv", other)
    got = loss_curves.compare(loss_curves.read_curve(a), loss_curves.read_curve(b), window=20, skip=20, tail=100)
    want = abs(other[-100:].mean() - base[-100:].mean()) / base[-100:].mean()
    assert got["steps"] == 300 and got["last_step"] == 299
    assert got["tail_rel_gap"] == pytest.approx(want, abs=1e-5)
    assert 0.02 < got["tail_rel_gap"] < 0.04  # the 3 % scale, through the noise
    assert got["max_smoothed_rel_gap_at_step"] >= 20


def test_the_cli_passes_within_the_tolerance_and_fails_outside_it(tmp_path, capsys):
    a = write_metrics(tmp_path / "a.csv", curve())
    near = write_metrics(tmp_path / "near.csv", curve(seed=2))
    again = write_metrics(tmp_path / "again.csv", curve(scale=1.03, seed=4))
    far = write_metrics(tmp_path / "far.csv", curve(scale=1.2, seed=3))
    out = tmp_path / "gap.json"
    result = loss_curves.main([str(a), str(near), "--noise", str(again), "--out", str(out)])
    assert result["within_tolerance"] and result["tail_rel_gap"] < 0.01
    noise = json.loads(out.read_text())["noise"]
    assert 0.015 < noise["tail_rel_gap"] < 0.045  # the 3 % run, not the one compared
    with pytest.raises(SystemExit) as err:
        loss_curves.main([str(a), str(far)])
    assert err.value.code == 1
    assert "OUTSIDE the tolerance 5.00%" in capsys.readouterr().out


def test_only_the_steps_both_runs_logged_are_compared(tmp_path):
    a = write_metrics(tmp_path / "a.csv", curve(), every=1)
    b = write_metrics(tmp_path / "b.csv", curve(), every=2)
    got = loss_curves.compare(loss_curves.read_curve(a), loss_curves.read_curve(b), tail=50)
    assert got["steps"] == 150 and got["tail_rel_gap"] == 0.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.csv", "no such metrics file"),
        (
            lambda p: write_metrics(p / "a.csv", curve(30)),
            r"a.csv against .*a.csv: 30 common logged steps; more than --skip 20 and --tail 100",
        ),
    ],
)
def test_unusable_files_are_one_line_errors(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(SystemExit, match=message):
        loss_curves.main([str(path), str(path)])


def test_a_file_without_the_metric_names_its_columns(tmp_path):
    path = write_metrics(tmp_path / "a.csv", curve())
    with pytest.raises(SystemExit, match=r"needs the columns 'step' and 'train/loss_ce'; it has epoch, lr/base"):
        loss_curves.main([str(path), str(path), "--metric", "train/loss_ce"])
