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
    # Connections beyond this are closed as soon as they are accepted (REST and gRPC each).
    max_connections: int = 1024
    # On SIGTERM: how long accepted requests may take to finish before the servers close.
    drain_timeout_s: float = 30.0
    # gRPC calls being served at once, over all connections: beyond it, RESOURCE_EXHAUSTED.
    grpc_max_calls: int = 1024
    # HTTP/2 streams one gRPC connection may open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    grpc_max_streams: int = 256
    # A gRPC connection is closed (GOAWAY, then `drain_timeout_s` for its calls) after this,
    # which bounds what a client that trickles a message can hold; clients reconnect.
    grpc_max_connection_age_s: float = 600.0
    # The server pings a gRPC connection silent this long and closes it when the ping is
    # not answered within grpc's 20 s (a peer that vanished without closing).
    grpc_keepalive_s: float = 60.0

    def __post_init__(self) -> None:
        for name in (
            "head_timeout_s",
            "body_timeout_s",
            "keepalive_timeout_s",
            "drain_timeout_s",
            "grpc_max_connection_age_s",
            "grpc_keepalive_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_connections", "grpc_max_calls", "grpc_max_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def grpc_options(self, max_message_bytes: int) -> list[tuple[str, int]]:
        """The grpc core channel arguments that enforce these limits on the gRPC server."""
        return [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            # a connection must send its HTTP/2 preface and settings within this, else
            # GOAWAY and close (grpc's default is 120 s)
            ("grpc.server_handshake_timeout_ms", _ms(self.head_timeout_s)),
            ("grpc.max_concurrent_streams", self.grpc_max_streams),
            ("grpc.max_connection_idle_ms", _ms(self.keepalive_timeout_s)),
            ("grpc.max_connection_age_ms", _ms(self.grpc_max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", _ms(self.drain_timeout_s)),
            ("grpc.keepalive_time_ms", _ms(self.grpc_keepalive_s)),
        ]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
