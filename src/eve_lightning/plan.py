"""``python -m eve_lightning.plan``: the planner's command line (``eve_lightning.planner.cli``; ``--help``)."""

from eve_lightning.planner.cli import main

if __name__ == "__main__":
    main()
