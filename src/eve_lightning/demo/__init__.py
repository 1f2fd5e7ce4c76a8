"""``python -m eve_lightning.demo``: the web demo under the name users know; the code is ``eve_lightning.webui``."""
