"""The one door to the forecast services: timeouts, status checks, retries, and foreign errors translated.

429, 5xx and timeouts are retried with exponential backoff (1, 2, 4 ... s, at most 60 s), honouring a
Retry-After header (seconds or an HTTP date) up to that cap; other 4xx fail at once with the status,
since a wrong key or region does not heal by retrying. Every failure becomes a ProviderError.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import httpx

from scheduler.errors import ProviderError

MAX_BACKOFF_S = 60.0


def _retry_after_s(response: httpx.Response, attempt: int) -> float:
    header = response.headers.get("Retry-After")
    if header:
        try:
            return min(MAX_BACKOFF_S, max(0.0, float(header)))
        except ValueError:
            when = email.utils.parsedate_to_datetime(header)
            if when is not None:
                return min(MAX_BACKOFF_S, max(0.0, (when - datetime.now(timezone.utc)).total_seconds()))
    return min(MAX_BACKOFF_S, 2.0 ** attempt)


def get(client: httpx.Client, url: str, *, what: str, timeout_s: float, retries: int, params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None, auth: httpx.Auth | tuple[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep) -> httpx.Response:
    """GET with a timeout and a status check; ``what`` names the provider in every error."""
    last = ""
    for attempt in range(retries + 1):
        try:
            response = client.get(url, params=params, headers=headers, auth=auth, timeout=timeout_s)
        except httpx.TimeoutException:
            last = f"timed out after {timeout_s:g} s"
            wait_s = min(MAX_BACKOFF_S, 2.0 ** attempt)
        except httpx.HTTPError as exc:
            last = f"cannot connect: {exc}"
            wait_s = min(MAX_BACKOFF_S, 2.0 ** attempt)
        else:
            if response.status_code == 429 or response.status_code >= 500:
                last = f"HTTP {response.status_code}"
                wait_s = _retry_after_s(response, attempt)
            elif response.status_code >= 400:
                hint = " (check the credentials)" if response.status_code in (401, 403) else ""
                raise ProviderError(f"{what}: HTTP {response.status_code} from {url}{hint}")
            else:
                return response
        if attempt < retries:
            sleep(wait_s)
    raise ProviderError(f"{what}: {last} ({retries + 1} attempts)")


def get_json(client: httpx.Client, url: str, *, what: str, **kwargs: Any) -> Any:
    response = get(client, url, what=what, **kwargs)
    try:
        return response.json()
    except ValueError as exc:
        raise ProviderError(f"{what}: malformed JSON from {url}: {exc}") from None


class HttpProvider:
    """What every HTTP provider shares: its settings, the client, the retry budget, and requests made through
    the door above with the configured timeout. A subclass names its ``kind``, ``default_url`` and region."""

    kind = ""
    default_url = ""

    def __init__(self, settings: Any, client: httpx.Client, retries: int) -> None:
        self.settings, self.client, self.retries = settings, client, retries
        self.name = f"{self.kind}:{self.region()}" if self.region() else self.kind

    def region(self) -> str:
        return ""

    def url(self, path: str = "") -> str:
        return (self.settings.base_url or self.default_url).rstrip("/") + path

    def get(self, path: str = "", **kwargs: Any) -> httpx.Response:
        return get(self.client, self.url(path), what=self.name, timeout_s=self.settings.timeout_s,
                   retries=self.retries, **kwargs)

    def get_json(self, path: str = "", **kwargs: Any) -> Any:
        return get_json(self.client, self.url(path), what=self.name, timeout_s=self.settings.timeout_s,
                        retries=self.retries, **kwargs)
