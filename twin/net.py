"""HTTP for text sources (feeds, pages, APIs): retries with backoff, rate limit, size cap."""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from . import __version__
from .errors import UsageError

USER_AGENT = f"twin/{__version__} (+persona research toolkit; honours opt-out lists)"
MAX_TEXT_BYTES = 50 * 1024 * 1024


class FetchFailed(Exception):
    """A URL could not be fetched; ``permanent`` says whether retrying could help."""

    def __init__(self, url: str, reason: str, permanent: bool = True):
        self.url = url
        self.permanent = permanent
        super().__init__(f"{url}: {reason}")


@dataclass
class Response:
    url: str            # the final URL after redirects
    status: int
    content_type: str
    body: bytes

    @property
    def text(self) -> str:
        import codecs
        charset = "utf-8"
        if "charset=" in self.content_type:
            charset = self.content_type.split("charset=")[-1].split(";")[0].strip() or "utf-8"
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = "utf-8"
        return self.body.decode(charset, errors="replace")


_last_request = 0.0
_rate_lock = threading.Lock()


def _wait_rate(min_interval: float) -> None:
    global _last_request
    if min_interval <= 0:
        return
    with _rate_lock:
        delay = _last_request + min_interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        _last_request = time.monotonic()


def get(url: str, *, retries: int = 3, backoff: float = 0.5, timeout: float = 30.0, min_interval: float = 0.0,
        params: dict | None = None, max_bytes: int = MAX_TEXT_BYTES) -> Response:
    """GET with retries on timeouts, connection errors, 429 and 5xx; 4xx fail at once."""
    import requests
    if urlparse(url).scheme not in ("http", "https"):
        raise UsageError(f"{url}: only http(s) URLs can be fetched over the network")
    last = "no attempt"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * (2 ** (attempt - 1)))
        _wait_rate(min_interval)
        try:
            with requests.get(url, params=params, timeout=timeout, stream=True,
                              headers={"User-Agent": USER_AGENT}) as r:
                if r.status_code == 429 or r.status_code >= 500:
                    last = f"HTTP {r.status_code}"
                    continue
                if r.status_code >= 400:
                    raise FetchFailed(url, f"HTTP {r.status_code} {r.reason}", permanent=True)
                body = bytearray()
                for block in r.iter_content(1 << 16):
                    body += block
                    if len(body) > max_bytes:
                        raise FetchFailed(url, f"larger than {max_bytes} bytes", permanent=True)
                return Response(r.url, r.status_code, r.headers.get("Content-Type", ""), bytes(body))
        except (requests.ConnectionError, requests.Timeout, socket.timeout) as exc:
            last = f"{type(exc).__name__}: {str(exc)[:200]}"
    raise FetchFailed(url, f"gave up after {retries + 1} attempts ({last})", permanent=False)
