"""eve_lightning: train, chat with and evaluate encoder-free vision-language models (EVE)."""

from eve_lightning.utils import third_party_logs

__version__ = "0.1.0"

third_party_logs.install()
