"""Health answers of a pod that holds only worker ranks of a group.

Kubernetes probes every pod of a group's StatefulSet with the same readinessProbe
(GET /v2/health/ready on the `http` port). The leader's pod answers it from the group's front
end: ready once every rank has joined and loaded its shards, not ready while it drains or a
rank is suspect. A pod without the leader has no front end, so one of its ranks (local rank 0)
serves this small stand-in on the same port: live and ready while the rank runs. The group's
readiness is the leader's, which cannot be ready before this pod's ranks joined; a dead worker
rank makes the leader exit (gang restart), so "ready while running" is not a lie here.

Only pods get it (`statmux runtime --worker-health`, set by the operator): local processes of
`statmux up` share one host, where the leader already owns the port.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("statmux.runtime")

HEALTH_PATHS = ("/v2/health/live", "/v2/health/ready")


def _handler(group: str, rank: int) -> type[BaseHTTPRequestHandler]:
    class WorkerHealth(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, str] | None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] in HEALTH_PATHS:
                self._answer(200, None)
                return
            self._answer(
                404,
                {
                    "error": f"this pod runs worker rank {rank} of group {group}; the group's "
                    "leader (rank 0) serves inference and metrics"
                },
            )

        do_HEAD = do_GET
        do_POST = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass  # kubelet probes every few seconds: not worth a log line each

    return WorkerHealth


def serve_worker_health(host: str, port: int, group: str, rank: int) -> ThreadingHTTPServer:
    """Start answering health probes on host:port in a daemon thread; returns the server."""
    server = ThreadingHTTPServer((host, port), _handler(group, rank))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="worker-health", daemon=True).start()
    log.info("worker rank %d of group %s: health answers on port %d", rank, group, port)
    return server
