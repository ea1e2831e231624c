"""Free TCP ports for the servers tests start, safe when test processes run in parallel."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 that no other process will be handed for a minute.

    Closing a socket bound to port 0 frees its port at once, so two test processes
    (pytest-xdist workers, other checkouts' suites) asking at the same moment could be
    handed the same one. Here the port ends in TIME_WAIT instead: a connection to it
    is accepted and closed from the port's side first. The kernel then hands it to
    no socket that binds to port 0 for a minute, while the servers the tests start
    (PostgreSQL, daphne, uvicorn all set SO_REUSEADDR) can still listen on it.
    """
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # this side closes first: its port enters TIME_WAIT
            client.recv(1)  # the end of the stream: the close went through
    return port
