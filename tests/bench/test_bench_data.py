"""The data benchmark runs end to end and ends with its JSON line."""

from __future__ import annotations

import json

from eve_lightning.bench import data as bench


def test_bench_data_smoke(capsys):
    results = bench.main(["--samples", "24", "--ref-samples", "4", "--sizes", "672", "--batch-size", "4"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == results
    assert set(results) == {"672"} and set(results["672"]) == {"ours", "reference", "ratio"}
    assert results["672"]["ours"] > 0 and results["672"]["reference"] > 0
    assert results["672"]["ratio"] > 2  # ~10x here; a loose bound that still catches a broken fast path
