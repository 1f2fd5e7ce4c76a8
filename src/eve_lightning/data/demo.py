"""``python -m eve_lightning.data.demo --out DIR``: the demo data generator, under the name users know.

The generator lives in ``eve_lightning.data.synthetic_shapes``; this module forwards to it, so the command and
``from eve_lightning.data import demo`` keep working.
"""

from eve_lightning.data.synthetic_shapes import *  # noqa: F403
from eve_lightning.data.synthetic_shapes import main

if __name__ == "__main__":
    main()
