"""The CLI's side of the daemon API: httpx over the daemon's Unix socket, errors translated here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from scheduler.errors import HTTP_STATUS, DaemonUnavailable, GschedError

_ERRORS = {code: cls for cls, code in HTTP_STATUS.items()}


class Client:
    def __init__(self, socket_path: Path, timeout_s: float = 30.0) -> None:
        self.socket_path = socket_path
        self._http = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://gsched",
                                  timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailable(
                f"no gsched daemon answers on {self.socket_path}: start one with 'gsched daemon' "
                "(or 'systemctl start gsched'), or point GSCHED_HOME / GSCHED_SOCKET at a running one") from exc
        except httpx.HTTPError as exc:
            raise GschedError(f"talking to the daemon on {self.socket_path} failed: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text or f"HTTP {response.status_code}"
            raise _ERRORS.get(response.status_code, GschedError)(message)
        return response

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/v1/info").json()

    def devices(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/devices").json()["devices"]

    def forecast(self, hours: float) -> dict[str, Any]:
        return self._request("GET", "/v1/forecast", params={"hours": hours}).json()

    def report(self, since: str | None, until: str | None, user: str | None) -> dict[str, Any]:
        params = {k: v for k, v in (("since", since), ("until", until), ("user", user)) if v}
        return self._request("GET", "/v1/report", params=params).json()

    def jobs(self) -> dict[str, Any]:
        return self._request("GET", "/v1/jobs").json()

    def job(self, job_id: int) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def submit(self, files: list[tuple[str, str, str]], urgent: bool = False,
               after: str | None = None) -> list[dict[str, Any]]:
        """Queue job files, each (text, source, base_dir): one job object, or a list of them stored together.
        ``after``: the jobs each waits for, as sbatch's --dependency says them."""
        from scheduler.environment import client_environment

        # The job runs in the submitter's environment (what its job file's export keeps), as sbatch and pueue do.
        environment = client_environment()
        bodies = [{"text": text, "source": source, "base_dir": base_dir, "urgent": urgent,
                   "environment": environment, **({"after": after} if after else {})}
                  for text, source, base_dir in files]
        reply = self._request("POST", "/v1/jobs", json=bodies[0] if len(bodies) == 1 else bodies).json()
        return reply if isinstance(reply, list) else [reply]

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def requeue(self, job_id: int) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/requeue").json()

    def log(self, job_id: int, offset: int = 0) -> tuple[bytes, int, str]:
        response = self._request("GET", f"/v1/jobs/{job_id}/log", params={"offset": offset})
        return response.content, int(response.headers["X-Log-Size"]), response.headers["X-Job-State"]
