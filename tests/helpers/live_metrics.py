"""The metric names a PromQL query may use against statmux's real /metrics output.

The runtime: a real FrontEnd over the one-process engine, served by the real HTTP server and
scraped after some requests (one model meets its SLO, admission refuses the other's). The
router: the exposition of its real prometheus-client registry (runtime/router_metrics.py).
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

import numpy as np
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from statmux.runtime.frontend import FrontEnd
from statmux.runtime.local_engine import LocalEngine, tiny_mlp
from statmux.runtime.server_runner import BackgroundServer

# The series names prometheus exposes per family type (a counter family "x" is "x_total").
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "untyped": ("",),
    "unknown": ("",),
    "summary": ("", "_sum", "_count"),
    "histogram": ("", "_bucket", "_sum", "_count"),
}


@dataclass
class Exposed:
    samples: set[str]  # the series names written out (the truth, when a family has samples)
    types: dict[str, str]  # every family -> its type

    @classmethod
    def parse(cls, text: str) -> Exposed:
        """From the exposition text itself: the names Prometheus stores are those written
        (prometheus-client's parser would add _total to a counter sample written without)."""
        samples = {
            re.split(r"[{\s]", line, maxsplit=1)[0]
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        return cls(samples, dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M)))

    def queryable(self, name: str) -> bool:
        """True for a series written out, a summary or histogram family (its _sum and _count
        are), and the series of a family written without samples (its labels never used)."""
        if name in self.samples or self.types.get(name) in ("summary", "histogram"):
            return True
        empty = {
            f: t for f, t in self.types.items() if not any(s.startswith(f) for s in self.samples)
        }
        return any(name == f + suffix for f, t in empty.items() for suffix in _SUFFIXES[t])

    def __or__(self, other: Exposed) -> Exposed:
        return Exposed(self.samples | other.samples, {**self.types, **other.types})


def scrape_live_server() -> Exposed:
    ok = tiny_mlp(name="ok", slo_seconds=60.0)
    strict = tiny_mlp(name="strict", slo_seconds=5.0)
    strict.info.stage_latency_s = {1: [10.0], 8: [10.0]}  # admission rejects every request
    engine = LocalEngine([ok, strict])
    server = BackgroundServer(FrontEnd(engine), grpc_port=None)
    try:
        client = th.InferenceServerClient(server.http_url)
        for model in ("ok", "strict"):
            inp = th.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(np.ones((1, 16), np.float32))
            try:
                client.infer(model, [inp])
            except InferenceServerException:
                assert model == "strict"
        client.close()
        with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=30) as r:
            text = r.read().decode()
    finally:
        server.stop()
        engine.shutdown()
    return Exposed.parse(text)


def router_exposition() -> Exposed:
    """The router's registry as prometheus-client writes it for /metrics."""
    from prometheus_client import generate_latest

    from statmux.runtime.router_metrics import GroupGauges, RouterMetrics

    metrics = RouterMetrics(
        GroupGauges(
            up=lambda: {"g0": True},
            outstanding=lambda: {"g0": 0},
            slo=lambda: {"m": 1.0},
            rates=lambda: {"m": 0.0},
        )
    )
    metrics.model("m")
    return Exposed.parse(generate_latest(metrics.registry).decode())
