"""A loopback HTTP file server for download tests (127.0.0.1 only, stops by itself).

Serves in-memory files by path, honours ``Range: bytes=N-`` / ``bytes=N-M`` (206 with
Content-Range, 416 past the end), and can misbehave on purpose:

* ``drop_after[path] = n``: the next GET of ``path`` sends the full Content-Length header,
  then only ``n`` bytes of the body and closes the connection (once per setting);
* ``corrupt.add(path)``: serve the file with some bytes flipped;
* ``no_range.add(path)``: ignore Range headers (answer 200 with the whole file);
* ``fail_first[path] = n``: answer the next ``n`` GETs of ``path`` with 503;
* ``no_length.add(path)``: send no Content-Length; the body ends when the connection closes
  (with ``drop_after``, a dropped connection looks exactly like the end of the file).

Every request is logged in ``requests`` as ``(path, range header or None)``. The server
shuts down after ``lifetime`` seconds even if a test forgets to stop it.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 10  # a stuck client cannot hold a handler thread for long

    def log_message(self, format, *args):  # keep pytest output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server naming
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        range_header = self.headers.get("Range")
        with owner.lock:
            owner.requests.append((path, range_header))
            body = owner.files.get(path)
            drop = owner.drop_after.pop(path, None)
            unavailable = owner.fail_first.get(path, 0) > 0
            if unavailable:
                owner.fail_first[path] -= 1
            corrupt = path in owner.corrupt
            ignore_range = path in owner.no_range
            no_length = path in owner.no_length
        if body is None:
            self.send_error(404)
            return
        if unavailable:
            self.send_error(503)
            return
        if corrupt:
            data = bytearray(body)
            for i in range(0, len(data), max(1, len(data) // 7)):
                data[i] ^= 0xFF
            body = bytes(data)
        start, end = 0, len(body) - 1
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if match and not ignore_range:
            start = int(match.group(1))
            if match.group(2):
                end = min(int(match.group(2)), end)
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        payload = body[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        self.end_headers()
        if drop is not None:
            self.wfile.write(payload[:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FileServer


class FileServer:
    """``with FileServer({"/a.zip": b"..."}) as server: server.url("/a.zip")``."""

    def __init__(self, files: dict[str, bytes] | None = None, lifetime: float = 120.0) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.drop_after: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.no_range: set[str] = set()
        self.no_length: set[str] = set()
        self.fail_first: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> FileServer:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
