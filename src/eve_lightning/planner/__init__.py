"""The planner: per-GPU memory and projected wall-clock of training stages, before running them.

``python -m eve_lightning.plan`` runs ``cli.main``. One job per module: ``memory`` (the memory model),
``throughput`` (the measured figures the time is projected from), ``parameters`` (a stage's parameter counts on the
meta device), ``recipe`` (the recipes and how their stages are composed), ``stage`` (one stage's projection),
``report`` (the printed plan and its assumptions), ``calibration`` (the memory model of a benchmark run, checked
against its measured peak), ``cli`` (the command line).
"""
