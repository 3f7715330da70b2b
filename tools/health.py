"""`HealthChecker` over HTTP: GET <url>/health with a timeout; a dead service is a result, not an error."""

from __future__ import annotations

import threading
import time

import httpx

from tools.base import HealthResult, NotFound


class HttpHealthChecker:
    """Probes `GET <base url>/health`; ok means HTTP 200."""

    def __init__(
        self,
        urls: dict[str, str],
        timeout_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Probe each service at its base URL (`{"frontend": "http://127.0.0.1:8001"}`)."""
        self.urls = {name: url.rstrip("/") for name, url in urls.items()}
        self.timeout_s = timeout_s
        self._transport = transport
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        """The shared client, created on first use."""
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout_s, transport=self._transport)
            return self._client

    def close(self) -> None:
        """Close the HTTP client."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> HttpHealthChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self, service: str) -> HealthResult:
        """Probe one service; never raises for an unreachable one (NotFound only for an unknown name)."""
        base = self.urls.get(service)
        if base is None:
            raise NotFound(f"no health URL for {service!r}; known services: {', '.join(sorted(self.urls))}")
        began = time.perf_counter()
        try:
            resp = self._http().get(f"{base}/health")
        except httpx.TimeoutException:
            return HealthResult(service=service, ok=False, detail=f"timed out after {self.timeout_s:g}s")
        except httpx.ConnectError as exc:
            return HealthResult(service=service, ok=False, detail=f"connection failed: {exc or 'refused'}")
        except httpx.HTTPError as exc:
            return HealthResult(service=service, ok=False, detail=f"{type(exc).__name__}: {exc}")
        latency_ms = (time.perf_counter() - began) * 1000.0
        if resp.status_code != 200:
            return HealthResult(
                service=service, ok=False, latency_ms=latency_ms, detail=f"HTTP {resp.status_code}"
            )
        version = ""
        try:
            body = resp.json()
            if isinstance(body, dict) and body.get("version"):
                version = f" version={body['version']}"
        except ValueError:
            pass
        return HealthResult(service=service, ok=True, latency_ms=latency_ms, detail=f"HTTP 200{version}")
