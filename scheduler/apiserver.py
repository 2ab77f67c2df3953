"""The API's transport: HTTP/1.1 on the daemon's Unix socket, asyncio for connections, h11 for HTTP.

Why not the stdlib's threading server (what gsched had): one thread per connection let 5,000 idle
clients make 4,600 threads, and nothing bounded how long a client may take to send its headers.
Why not uvicorn or aiohttp: neither bounds the time to receive a request's headers, and a shared server
needs connection limits per Unix user, decided at accept() from SO_PEERCRED, which both would need
reached into through private hooks. Here h11 (the parser under uvicorn and httpcore, already installed
with httpx) does the HTTP, and this module keeps only the policy:

- an idle connection costs a file descriptor and a coroutine, never a thread;
- at most ``api.max_connections`` connections, ``api.max_connections_per_user`` of them from one
  non-root user; past either, 503 at once;
- the whole request (headers and body) must arrive within ``api.request_timeout_s`` (else 408);
- Content-Length is checked by h11 (a negative or malformed one is a 400) and against
  ``api.max_body_kb`` before any body is read (413);
- handlers run on ``api.workers`` threads, with at most 8 requests waiting per worker (503 beyond), so the
  daemon's tick and other users' requests keep their share;
- one request per connection (Connection: close), so a client cannot hold a slot between requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11

from scheduler.api import Api, Caller
from scheduler.config import ApiSettings
from scheduler.errors import HTTP_STATUS, GschedError, InputError
from scheduler.timeutil import rfc3339

log = logging.getLogger("gsched.api")
MAX_HEADER_BYTES = 16 * 1024


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    raise TypeError(type(value).__name__)


class ApiServer:
    def __init__(self, path: Path, api: Api, settings: ApiSettings | None = None) -> None:
        self.api, self.path = api, path
        self.settings = settings or ApiSettings()
        self._sock = self._bind(path)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_uid: Counter[int] = Counter()
        self._waiting = 0
        self._executor = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="api")

    @staticmethod
    def _bind(path: Path) -> socket.socket:
        if path.exists() or path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # a stale socket from a daemon that died
            else:
                raise GschedError(f"another gsched daemon is already listening on {path}")
            finally:
                probe.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(socket.SOMAXCONN)
        os.chmod(path, 0o666)  # anyone may connect; SO_PEERCRED decides what they may do
        return sock

    # --- lifecycle (called from other threads) ----------------------------------------------------------

    def serve_forever(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self._stopped.set()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop has just closed
            self._stopped.wait(timeout_s)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def server_close(self) -> None:
        self._sock.close()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_unix_server(self._connection, sock=self._sock, limit=MAX_HEADER_BYTES)
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- one connection -------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        counted: int | None = None
        try:
            sock = writer.get_extra_info("socket")
            caller = Caller(*struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                 struct.calcsize("3i"))))
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
            s = self.settings
            if len(self._tasks) > s.max_connections:
                await self._respond(writer, conn, 503, {"error": f"the daemon is busy: over {s.max_connections} "
                                                        "connections; try again", "kind": "DaemonBusy"})
                return
            if caller.uid != 0 and self._per_uid[caller.uid] >= s.max_connections_per_user:
                await self._respond(writer, conn, 503, {"error": f"you have {s.max_connections_per_user} connections "
                                                        "open to the daemon (api.max_connections_per_user); close "
                                                        "some and try again", "kind": "DaemonBusy"})
                return
            counted = caller.uid
            self._per_uid[caller.uid] += 1
            try:
                request = await asyncio.wait_for(self._read(reader, conn), timeout=s.request_timeout_s)
            except asyncio.TimeoutError:
                await self._respond(writer, conn, 408, {"error": f"request not received within "
                                                        f"{s.request_timeout_s:g} s", "kind": "InputError"})
                return
            except h11.RemoteProtocolError as exc:
                await self._respond(writer, conn, exc.error_status_hint or 400,
                                    {"error": f"bad request: {exc}", "kind": "InputError"})
                return
            except _TooLarge as exc:
                await self._respond(writer, conn, 413, {"error": str(exc), "kind": "InputError"})
                return
            if request is None:
                return  # the client left
            method, target, body = request
            if self._waiting >= s.workers * 8:
                await self._respond(writer, conn, 503, {"error": "the daemon is busy; try again", "kind": "DaemonBusy"})
                return
            self._waiting += 1
            try:
                status, headers, data = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._handle, method, target, caller, body)
            finally:
                self._waiting -= 1
            await self._respond_raw(writer, conn, status, headers, data)
        except (ConnectionError, asyncio.IncompleteReadError, h11.LocalProtocolError, RuntimeError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection failed")
        finally:
            if counted is not None:
                self._per_uid[counted] -= 1
                if not self._per_uid[counted]:
                    del self._per_uid[counted]
            self._tasks.discard(task)
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, conn: h11.Connection) -> tuple[str, str, bytes] | None:
        limit = self.settings.max_body_kb * 1024
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                request = event
                length = dict(event.headers).get(b"content-length")
                if length is not None and int(length) > limit:
                    raise _TooLarge(f"request body of {int(length)} bytes is over the {limit}-byte limit")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise _TooLarge(f"request body over the {limit}-byte limit")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request.method.decode("ascii", "replace"), request.target.decode("ascii", "replace"), bytes(body)

    def _handle(self, method: str, target: str, caller: Caller, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """On a worker thread: route, run, and serialise; every error becomes a status and a message."""
        try:
            url = urlsplit(target)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                payload_in = json.loads(body) if body else None
            except (ValueError, RecursionError) as exc:
                raise InputError(f"request body is not JSON: {exc}") from None
            status, payload = self.api.handle(method, unquote(url.path), caller, query, payload_in)
        except GschedError as exc:
            status = next((code for cls, code in HTTP_STATUS.items() if isinstance(exc, cls)), 500)
            payload = {"error": str(exc), "kind": type(exc).__name__}
        except (ValueError, TypeError, OverflowError) as exc:
            status, payload = 400, {"error": f"bad request: {exc}", "kind": "InputError"}
        except Exception as exc:  # never let one request take the daemon down
            log.exception("request %s %s failed", method, target[:200])
            status, payload = 500, {"error": f"internal error: {exc}", "kind": "GschedError"}
        if isinstance(payload, tuple):
            data, headers = payload
            return status, {"Content-Type": "application/octet-stream", **headers}, data
        return status, {"Content-Type": "application/json"}, json.dumps(payload, default=_json_default).encode()

    async def _respond(self, writer: asyncio.StreamWriter, conn: h11.Connection, status: int,
                       payload: dict[str, Any]) -> None:
        await self._respond_raw(writer, conn, status, {"Content-Type": "application/json"},
                                json.dumps(payload).encode())

    async def _respond_raw(self, writer: asyncio.StreamWriter, conn: h11.Connection, status: int,
                           headers: dict[str, str], data: bytes) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        head = [(k, v) for k, v in headers.items()] + [("Content-Length", str(len(data))), ("Connection", "close")]
        try:
            out = conn.send(h11.Response(status_code=status, headers=head))
            out += conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        writer.write(out)
        await asyncio.wait_for(writer.drain(), timeout=30)


class _TooLarge(Exception):
    pass
