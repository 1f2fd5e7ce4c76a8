"""Free TCP ports for tests that start servers or process groups (gloo rendezvous, the web demo).

Never a fixed port: `make test` runs the suite in parallel workers (pytest-xdist), and two tests (or two copies of
one module-scoped fixture) on different workers must not rendezvous on the same port.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
