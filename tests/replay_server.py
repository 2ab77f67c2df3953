"""A local stand-in for the UK Carbon Intensity API: replays the recorded fw48h body, re-dated to the asked time.

    python tests/replay_server.py PORT_FILE [SLOTS]

Serves GET /intensity/{from}/fw48h on 127.0.0.1 (a free port, written to PORT_FILE) with the first SLOTS
half-hours (default 96) of the recorded response, shifted so the first starts at {from}. Nothing else.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BODY = json.loads((Path(__file__).parent / "fixtures/api-samples/nmpowell_national_fw48h_2023-03-14T1201Z.json")
                  .read_text())
SLOTS = int(sys.argv[2]) if len(sys.argv) > 2 else 96


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) != 3 or parts[0] != "intensity" or parts[2] != "fw48h":
            self.send_error(404)
            return
        start = datetime.strptime(parts[1], "%Y-%m-%dT%H:%MZ").replace(tzinfo=timezone.utc)
        first = datetime.strptime(BODY["data"][0]["from"], "%Y-%m-%dT%H:%MZ").replace(tzinfo=timezone.utc)
        shift = start - first
        rows = []
        for row in BODY["data"][:SLOTS]:
            moved = dict(row)
            for key in ("from", "to"):
                t = datetime.strptime(row[key], "%Y-%m-%dT%H:%MZ").replace(tzinfo=timezone.utc) + shift
                moved[key] = t.strftime("%Y-%m-%dT%H:%MZ")
            rows.append(moved)
        data = json.dumps({"data": rows}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Path(sys.argv[1]).write_text(str(server.server_address[1]))
    server.serve_forever()
