"""`python -m eve_lightning.demo`: serve the web demo of a trained EVE model on http://127.0.0.1:7860.

Without ``--model`` it serves ``runs/demo/latest`` (under ``$EVE_ROOT``, else the current directory): the tiny
demo model that ``make train`` leaves. The port is taken (bound and listening) before the model loads, so a port
that is out of range or already in use, like a missing model folder, ends it at once with exit status 2 and one
line saying what to change; the address is printed only once the model is loaded and the port is ours.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from eve_lightning.utils.cli import OneLineArgumentParser, usage_error

PROG = "python -m eve_lightning.demo"
DEFAULT_PORT = 7860


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
    p = OneLineArgumentParser(
        prog=PROG,
        description="Chat with a trained EVE model about an image, in your browser (http://127.0.0.1:7860).",
    )
    p.add_argument(
        "--model",
        help="model folder: a stage export, a training checkpoint or an official EVE checkpoint "
        "(default: runs/demo/latest, left by `make train`)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port, 1-65535 (default {DEFAULT_PORT})")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1, this machine only; 0.0.0.0 opens it to your network)",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    return p.parse_args(argv)


def fail(message: str) -> NoReturn:
    """End the process with one line on stderr and exit status 2 (a problem with what was asked)."""
    usage_error(PROG, message)


def check_port(port: int) -> None:
    """Refuse a number that is not a TCP port (`SystemExit` 2, one line)."""
    if not 1 <= port <= 65535:
        fail(f"--port {port} is not a port number: use one from 1 to 65535 (default {DEFAULT_PORT})")


def listen(host: str, port: int) -> socket.socket:
    """Take `port` on `host` now (bound and listening) and return the socket the server will serve on.

    Connections that come while the model loads wait in the socket's queue. IPv6 when `host` holds a colon, as
    uvicorn does.

    Raises:
        SystemExit: (2) with one line naming the fix: a port out of range, one already in use, one that needs
            administrator rights, or a host that is not an address of this machine.
    """
    check_port(port)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            fail(f"port {port} on {host} is already in use by another program: stop it, or pass a free --port")
        if e.errno == errno.EACCES:
            fail(f"no permission to listen on port {port}: pass a --port from 1024 to 65535 (default {DEFAULT_PORT})")
        fail(
            f"cannot listen on --host {host} port {port} ({e.strerror or e}): give an address of this machine "
            "(127.0.0.1, the default: this machine only; 0.0.0.0: every interface)"
        )
    sock.set_inheritable(True)
    return sock


def url(host: str, port: int) -> str:
    """The address to open in a browser for a server listening on `host`."""
    shown = "127.0.0.1" if host == "localhost" else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def main(argv: Sequence[str] | None = None) -> None:
    """Take the port, load the model and serve the demo until Ctrl+C.

    Raises:
        SystemExit: (2) with one line saying what to do when an argument is wrong, the port cannot be taken, or
            the model folder is missing or cannot be loaded; all of it is checked before the model loads.
    """
    args = parse_args(argv)
    check_port(args.port)
    model_dir = Path(args.model) if args.model else default_model_dir()
    if not model_dir.exists():
        if args.model:
            fail(f"model {model_dir} does not exist: check --model")
        fail(f"no demo model at {model_dir}: run `make train` first, or pass --model DIR")
    sock = listen(args.host, args.port)
    with sock:
        try:
            import uvicorn

            from eve_lightning.webui.server import LOOPBACK_HOSTS, create_app
        except ImportError as e:
            fail(f"the web demo needs {e.name}, which is not installed: pip install -e '.[demo]'")
        from eve_lightning.inference.engine import ChatEngine

        print(f"loading {model_dir} ...", flush=True)
        try:
            engine = ChatEngine.from_dir(model_dir, device=args.device)
        except (FileNotFoundError, ValueError) as e:
            fail(f"cannot load a model from {model_dir}: {e}")
        loopback = is_loopback(args.host)
        app = create_app(engine, allowed_hosts=LOOPBACK_HOSTS if loopback else None)
        print(f"EVE demo: {engine.model_name} on {url(args.host, args.port)} (Ctrl+C stops it)", flush=True)
        if not loopback:
            print(f"warning: listening on {args.host}: anyone who can reach this machine can use the demo", flush=True)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
        uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
