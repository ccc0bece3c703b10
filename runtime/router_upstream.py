"""HTTP to the group leaders: forward a REST request as bytes, health checks, timeouts.

The router talks REST to every group (the group Services expose REST; gRPC requests are
re-framed as the binary tensor extension, see router_grpc). Bodies pass through as bytes:
nothing is decoded here.

Failures are classified for the router's retry rule:
- NotAccepted: the group never got the request (connection refused, DNS, connect timeout).
- Broken: the connection broke after the request was sent (the group died mid-request).
- HopTimeout: the group took longer than the hop timeout to answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

HEADER_LENGTH = "Inference-Header-Content-Length"


class UpstreamError(Exception):
    pass


class NotAccepted(UpstreamError):
    """The group did not receive the request: safe to send it elsewhere."""


class Broken(UpstreamError):
    """The connection failed after the request was sent."""


class HopTimeout(UpstreamError):
    pass


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str | None
    header_length: str | None  # Inference-Header-Content-Length, when binary


class Upstreams:
    """One pooled HTTP client for every group (keep-alive connections per group)."""

    def __init__(self, connect_timeout_s: float, hop_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.hop_timeout_s = hop_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=hop_timeout_s, sock_connect=connect_timeout_s, connect=connect_timeout_s
        )

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=10, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        timeout = (
            self._timeout
            if timeout_s is None
            else aiohttp.ClientTimeout(
                total=timeout_s, sock_connect=min(self.connect_timeout_s, timeout_s)
            )
        )
        sent = False
        try:
            async with self.session().request(
                method, url, data=body, headers=headers, timeout=timeout
            ) as resp:
                sent = True
                payload = await resp.read()
                return Reply(
                    resp.status,
                    payload,
                    resp.headers.get("Content-Type"),
                    resp.headers.get(HEADER_LENGTH),
                )
        except aiohttp.ConnectionTimeoutError as e:
            raise NotAccepted(f"connect timed out after {self.connect_timeout_s:g} s") from e
        except (TimeoutError, aiohttp.ServerTimeoutError) as e:
            limit = self.hop_timeout_s if timeout_s is None else timeout_s
            raise HopTimeout(f"no answer within {limit:g} s") from e
        except aiohttp.ClientConnectorError as e:
            raise NotAccepted(f"cannot connect: {e.os_error or e}") from e
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
            raise Broken(f"connection broke: {e or type(e).__name__}") from e
        except aiohttp.ClientError as e:
            raise (Broken if sent else NotAccepted)(f"{type(e).__name__}: {e}") from e

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def probe_ready(upstreams: Upstreams, url: str, timeout_s: float) -> str | None:
    """None when GET /v2/health/ready answers 200, else why not."""
    try:
        reply = await upstreams.request("GET", url + "/v2/health/ready", timeout_s=timeout_s)
    except UpstreamError as e:
        return str(e)
    except asyncio.CancelledError:
        raise
    if reply.status == 200:
        return None
    return f"not ready (HTTP {reply.status})"
