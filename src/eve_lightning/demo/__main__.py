"""`python -m eve_lightning.demo`: serve the web demo of a trained EVE model on http://127.0.0.1:7860.

Without ``--model`` it serves ``runs/demo/latest`` (under ``$EVE_ROOT``, else the current directory): the tiny
demo model that ``make train`` leaves.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn


def default_model_dir() -> Path:
    """Where `make train` publishes the demo model."""
    return Path(os.environ.get("EVE_ROOT") or ".") / "runs" / "demo" / "latest"


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eve_lightning.demo",
        description="Chat with a trained EVE model about an image, in your browser (http://127.0.0.1:7860).",
    )
    p.add_argument(
        "--model",
        help="model folder: a stage export, a training checkpoint or an official EVE checkpoint "
        "(default: runs/demo/latest, left by `make train`)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1, this machine only; 0.0.0.0 opens it to your network)",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    return p.parse_args(argv)


def fail(message: str) -> NoReturn:
    """End the process with one line on stderr and exit status 2 (a problem with what was asked)."""
    print(f"eve_lightning.demo: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    """Load the model and serve the demo until Ctrl+C.

    Raises:
        SystemExit: with one line saying what to do when the model folder is missing or cannot be loaded.
    """
    args = parse_args(argv)
    model_dir = Path(args.model) if args.model else default_model_dir()
    if not model_dir.exists():
        if args.model:
            fail(f"model {model_dir} does not exist: check --model")
        fail(f"no demo model at {model_dir}: run `make train` first, or pass --model DIR")

    import uvicorn

    from eve_lightning.demo.server import LOOPBACK_HOSTS, create_app
    from eve_lightning.inference.engine import ChatEngine

    print(f"loading {model_dir} ...", flush=True)
    try:
        engine = ChatEngine.from_dir(model_dir, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        fail(f"cannot load a model from {model_dir}: {e}")
    loopback = is_loopback(args.host)
    app = create_app(engine, allowed_hosts=LOOPBACK_HOSTS if loopback else None)
    shown = "127.0.0.1" if args.host == "localhost" else args.host
    print(f"EVE demo: {engine.model_name} on http://{shown}:{args.port} (Ctrl+C stops it)", flush=True)
    if not loopback:
        print(f"warning: listening on {args.host}: anyone who can reach this machine can use the demo", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
