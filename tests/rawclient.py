"""A raw client for the daemon's socket, run as any user: sends what the real CLI never would.

    python rawclient.py SOCKET request METHOD PATH [BODY]   -> prints {"status", "body"} as JSON
    python rawclient.py SOCKET hold N SECONDS               -> opens N connections that send half a header
                                                               and hold them; prints how many were answered
                                                               at once (refused) and how many stayed open
"""

from __future__ import annotations

import json
import resource
import socket
import sys
import time


def request(path: str, raw: bytes, timeout_s: float = 30) -> dict[str, object]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    sock.connect(path)
    sock.sendall(raw)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head else 0
    return {"status": status, "body": body.decode("utf-8", "replace")}


def main() -> None:
    path, verb = sys.argv[1], sys.argv[2]
    if verb == "request":
        method, target = sys.argv[3], sys.argv[4]
        body = sys.argv[5].encode() if len(sys.argv) > 5 else b""
        raw = f"{method} {target} HTTP/1.1\r\nHost: gsched\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        print(json.dumps(request(path, raw)))
    elif verb == "raw":
        print(json.dumps(request(path, sys.stdin.buffer.read())))
    elif verb == "hold":
        count, seconds = int(sys.argv[3]), float(sys.argv[4])
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        held = []
        for _ in range(count):
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            except OSError:
                break
            try:
                sock.connect(path)
                sock.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: gs")  # and never finish the header
            except OSError:
                sock.close()
                continue
            held.append(sock)
        print("holding", flush=True)
        time.sleep(seconds)
        refused = 0
        for sock in held:
            sock.setblocking(False)
            try:
                if sock.recv(1024).startswith(b"HTTP/1.1 503"):
                    refused += 1
            except OSError:
                pass
        print(json.dumps({"opened": len(held), "refused": refused}))


if __name__ == "__main__":
    main()
