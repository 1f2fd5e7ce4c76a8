"""Local web demo: chat with a trained EVE model about an image in the browser.

`python -m eve_lightning.demo [--model DIR] [--port 7860] [--host 127.0.0.1]` serves the page (`eve_lightning.demo`
is the name users know and forwards here; `python -m eve_lightning.webui` does the same); `server.create_app`
builds the same app in-process around a loaded engine (tests do that).
"""
