"""How long a client may take, how many connections it may hold, how long a drain lasts."""

from __future__ import annotations

from dataclasses import dataclass

# The largest request body a server accepts unless told otherwise (--max-request-bytes).
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServerLimits:
    # From a request's first byte until its head (request line and headers) is complete:
    # a slowloris client that trickles a head is answered 408 and closed.
    head_timeout_s: float = 10.0
    # Reading a request body once its head arrived.
    body_timeout_s: float = 30.0
    # Idle keep-alive connections (no request in progress) are closed after this.
    keepalive_timeout_s: float = 75.0
    # Connections beyond this are closed as soon as they are accepted.
    max_connections: int = 1024
    # On SIGTERM: how long accepted requests may take to finish before the servers close.
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("head_timeout_s", "body_timeout_s", "keepalive_timeout_s", "drain_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")
