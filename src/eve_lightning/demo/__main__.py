"""``python -m eve_lightning.demo``: serves the web demo (``eve_lightning.webui``), with the same arguments."""

from eve_lightning.webui.__main__ import main

if __name__ == "__main__":
    main()
