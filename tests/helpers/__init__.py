"""Shared test helpers, imported as ``tests.helpers.<module>``.

pytest puts the repository root on ``sys.path`` (``pythonpath`` in pyproject.toml). Training runs started as
subprocesses get it through ``PYTHONPATH`` (``runs.run_cli``), so configs can name the test callbacks here by
their import path, e.g. ``+callbacks.nan._target_=tests.helpers.nan_inject.NanAt``.
"""
