"""eve_lightning: train, chat with and evaluate encoder-free vision-language models (EVE)."""

__version__ = "0.1.0"
