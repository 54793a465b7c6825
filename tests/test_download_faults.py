"""Download faults against a real HTTP server on 127.0.0.1 (no mocking of the HTTP client).

Each fault is served by the first mirror; a healthy mirror follows. The stage must fall
back (or, with no healthy mirror, fail naming each source and its reason), never leave a
partial or unverified file, and succeed on a later run with a healthy source.
"""

from __future__ import annotations

import gzip
import http.server
import re
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from mnist_cnn.datasets import FILENAMES, DatasetSpec
from mnist_cnn.sources import DownloadError, Source, fetch_dataset
from tests.conftest import sha256

CONTENT = {name: f"idx payload {name} ".encode() * 4000 for name in FILENAMES.values()}
GZ = {name: gzip.compress(data, mtime=0) for name, data in CONTENT.items()}
BOMB = gzip.compress(bytes(64 << 20), compresslevel=9, mtime=0)  # ~64 KiB on disk
HUGE = 256 << 20  # what the oversized faults would send in full: 256 MiB
CHUNK = 1 << 16
# Client connect/read timeouts (seconds). Only the stall fault is about timing out, and a
# loaded machine can only make it time out sooner; every other fault gets a timeout no
# busy CPU reaches (serving `toolong` builds a 256 MiB body before the first byte).
TIMEOUT = 10.0
STALL_TIMEOUT = 0.5
STALL = 3.0  # how long the stalling server waits: well past STALL_TIMEOUT, still bounded


def timeout_for(fault: str) -> float:
    return STALL_TIMEOUT if fault == "stall" else TIMEOUT


class FaultyHandler(http.server.BaseHTTPRequestHandler):
    """GET /<fault>/<file>: serve `file` with the named fault."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, body: bytes, status: int = 200, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self):  # http.server's naming
        _, fault, name = self.path.split("/", 2)
        body = GZ.get(name)
        if body is None:
            return self._send(b"no such file", status=404)
        counts = self.server.request_counts
        counts[self.path] = counts.get(self.path, 0) + 1
        if fault == "ok":
            return self._send(body)
        if fault == "missing":
            return self._send(b"not found", status=404)
        if fault == "error500":
            return self._send(b"boom", status=500)
        if fault == "flaky":  # 500 on the first request for each file, then fine
            return self._send(b"boom", status=500) if counts[self.path] == 1 else self._send(body)
        if fault == "redirect":
            self.send_response(302)
            self.send_header("Location", f"/ok/{name}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if fault == "garbage":  # bytes that are not gzip at all
            return self._send(b"\x00garbage" * 100)
        if fault == "truncated":  # a gzip stream cut short (consistent Content-Length)
            return self._send(body[: len(body) // 2])
        if fault == "othergzip":  # a valid gzip of the wrong content
            return self._send(gzip.compress(b"some other dataset" * 100, mtime=0))
        if fault == "bomb":  # a small gzip that decompresses to 64 MiB of zeros
            return self._send(BOMB)
        if fault == "toolong":  # an honest Content-Length far past the file's size
            return self._send(body + bytes(HUGE), length=len(body) + HUGE)
        if fault == "endless":  # no Content-Length: the body runs until the client stops
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            sent = 0
            try:
                while sent < HUGE and not self.server.stop.is_set():
                    self.wfile.write(bytes(CHUNK))
                    sent += CHUNK
            except OSError:  # the client hung up: what it should do
                pass
            self.server.sent[self.path] = sent
            return None
        if fault == "reset":  # promise the whole body, send half, then reset the connection
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            # Linger 0 makes close() send a TCP RST; the file wrappers hold the socket
            # open, so close them first.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.wfile.close()
            self.rfile.close()
            self.connection.close()
            return None
        if fault == "stall":  # headers, then silence past the client's timeout
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            self.server.stop.wait(STALL)
            return None
        return self._send(b"unknown fault", status=400)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FaultyHandler)
    httpd.daemon_threads = True
    httpd.request_counts = {}
    httpd.sent = {}
    httpd.stop = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def spec() -> DatasetSpec:
    return DatasetSpec(
        key="toy",
        title="Toy",
        class_names=tuple("abcdefghij"),
        sha256={n: sha256(d) for n, d in CONTENT.items()},
        upstream_gz_md5={},
        mirrors=(),
        sizes={n: len(d) for n, d in CONTENT.items()},
    )


def mirror(base: str, fault: str) -> Source:
    return Source(f"mirror {fault}", f"{base}/{fault}/")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# fault -> the reason the stage must give when that mirror is the only one
FAULTS = {
    "missing": r"HTTP 404",
    "error500": r"failed after 2 attempts; last: HTTP 500",
    "reset": r"failed after 2 attempts; last: connection broken",
    "stall": r"failed after 2 attempts; last: timed out",
    "garbage": r"not a valid gzip file",
    "truncated": r"not a valid gzip file",
    "othergzip": r"checksum mismatch",
    "bomb": r"decompresses to more than \d+ bytes",
    "toolong": r"announces \d+ bytes, more than the file can take",
    "endless": r"sent more than \d+ bytes",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_falls_back_to_next_mirror(tmp_path, spec, server, fault, capsys):
    _, base = server
    raw = tmp_path / "raw"
    started = time.monotonic()
    used = fetch_dataset(
        spec,
        [mirror(base, fault), mirror(base, "ok")],
        raw / "toy",
        timeout=timeout_for(fault),
        retries=1,
    )
    assert set(used.values()) == {"mirror ok"}
    assert leftovers(raw) == ["toy"] and leftovers(raw / "toy") == sorted(CONTENT)
    for name, data in CONTENT.items():
        assert gzip.decompress((raw / "toy" / name).read_bytes()) == data
    assert f"from mirror {fault}:" in capsys.readouterr().err
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_alone_fails_cleanly_then_healthy_run_succeeds(tmp_path, spec, server, fault):
    _, base = server
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError) as error:
        fetch_dataset(
            spec, [mirror(base, fault)], raw / "toy", timeout=timeout_for(fault), retries=1
        )
    message = str(error.value)
    assert "no verified copy of train-images-idx3-ubyte.gz" in message
    assert f"mirror {fault}: " in message
    assert re.search(FAULTS[fault], message), message
    assert leftovers(raw) == []  # no partial dataset, no staging directory, no temp file

    fetch_dataset(spec, [mirror(base, "ok")], raw / "toy", timeout=TIMEOUT, retries=1)
    assert leftovers(raw / "toy") == sorted(CONTENT)


def test_transient_500_is_retried_on_the_same_mirror(tmp_path, spec, server):
    httpd, base = server
    used = fetch_dataset(
        spec,
        [mirror(base, "flaky"), mirror(base, "ok")],
        tmp_path / "toy",
        timeout=TIMEOUT,
        retries=1,
    )
    assert set(used.values()) == {"mirror flaky"}
    assert all(httpd.request_counts[f"/flaky/{name}"] == 2 for name in CONTENT)


def test_redirect_is_followed(tmp_path, spec, server):
    _, base = server
    used = fetch_dataset(
        spec, [mirror(base, "redirect")], tmp_path / "toy", timeout=TIMEOUT, retries=0
    )
    assert set(used.values()) == {"mirror redirect"}


def test_endless_body_is_cut_at_the_files_bound(tmp_path, spec, server):
    """The client stops reading at gzip_bound(size), not at what the server would send."""
    from mnist_cnn.sources import gzip_bound

    httpd, base = server
    with pytest.raises(DownloadError):
        fetch_dataset(spec, [mirror(base, "endless")], tmp_path / "toy", timeout=TIMEOUT, retries=0)
    stop = time.monotonic() + 10
    while not httpd.sent and time.monotonic() < stop:
        time.sleep(0.05)  # the handler records what it sent once the client hung up
    bound = gzip_bound(spec.sizes["train-images-idx3-ubyte.gz"])
    sent = httpd.sent["/endless/train-images-idx3-ubyte.gz"]
    # What the server got out before noticing: the bound plus socket buffers, not 256 MiB.
    assert sent < bound + (16 << 20) < HUGE


def test_gzip_bomb_is_not_decompressed_past_the_files_size(tmp_path):
    from mnist_cnn.sources import RejectedCopy, decompressed_sha256

    bomb = tmp_path / "bomb.gz"
    bomb.write_bytes(BOMB)
    started = time.monotonic()
    with pytest.raises(RejectedCopy, match="decompresses to more than 1000 bytes"):
        decompressed_sha256(bomb, 1000)
    assert time.monotonic() - started < 1.0  # 64 MiB would take longer to inflate and hash
