"""``python -m eve_lightning.eval``: see ``eve_lightning.eval.cli``."""

from eve_lightning.eval.cli import main

if __name__ == "__main__":
    main()
