"""The HTTPS target against a real TLS server (http.server in a thread, ssl from the standard library)
with a test CA from `fleet.security.make_tls`: client certificate required, server certificate always
verified, verification by the digest the server echoes or by size."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import os
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.security import make_tls
from hub.upload.https import HttpsTarget
from hub.upload.queue import Queue
from hub.upload.transfer import sha256_of
from hub.upload.uploader import Uploader


class PutServer:
    """Takes `PUT /path` into `root`; echoes `Repr-Digest` of what it stored when `digest` is on."""

    def __init__(self, root: Path, tls: dict[str, Path], digest: bool = True) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers["Content-Length"])
                h = hashlib.sha256()
                dest = server.root / self.path.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with dest.open("wb") as f:
                    while length:
                        block = self.rfile.read(min(length, 1 << 20))
                        if not block:
                            break
                        f.write(block)
                        h.update(block)
                        length -= len(block)
                self.send_response(201)
                if digest:
                    self.send_header("Repr-Digest", f"sha-256=:{base64.b64encode(h.digest()).decode()}:")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls["ca"]))
        ctx.load_cert_chain(tls["cert"], tls["key"])
        ctx.verify_mode = ssl.CERT_REQUIRED  # a client certificate from our CA, or no upload
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # the handshake happens in each request's thread, so a client that stalls or aborts it (the wrong-
        # certificate test) never holds up the accepting thread
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-https-put", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tls(tmp_path_factory.mktemp("tls"), ["127.0.0.1"])


@pytest.fixture
def put_server(tmp_path: Path, tls: dict[str, Path]) -> Iterator[callable]:  # type: ignore[valid-type]
    servers: list[PutServer] = []

    def make(digest: bool = True, tls_files: dict[str, Path] | None = None) -> PutServer:
        servers.append(PutServer(tmp_path / f"www{len(servers)}", tls_files or tls, digest))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def target(server: PutServer, tls: dict[str, Path], **extra: object) -> HttpsTarget:
    return HttpsTarget("cloud", url=f"https://127.0.0.1:{server.port}/dashcam/{{hub}}/{{name}}", ca=str(tls["ca"]),
                       cert=str(tls["client_cert"]), key=str(tls["client_key"]), **extra)  # type: ignore[arg-type]


async def drain(up: Uploader) -> str:
    task = asyncio.create_task(up.run(), name="test-uploader")
    try:
        return await asyncio.wait_for(up.wait_empty(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("digest", [True, False], ids=["digest", "size-only"])
async def test_https_put_with_client_cert(put_server, tls: dict[str, Path], tmp_path: Path, digest: bool) -> None:
    server = put_server(digest=digest)
    files = []
    for i, size in enumerate((0, 70_000, 3_000_000)):
        f = tmp_path / f"seg{i}.mp4"
        f.write_bytes(os.urandom(size))
        files.append(f)
    with Queue(tmp_path / "q.db") as queue:
        up = Uploader(queue, {"cloud": target(server, tls)}, hub_id="car")
        for f in files:
            up.add(f, f.stat().st_size, sha256_of(f))
        assert await drain(up) == "empty"
        assert [r["verified"] for r in queue.rows()] == ["sha256" if digest else "size"] * 3
    for f in files:
        assert (server.root / "dashcam" / "car" / f.name).read_bytes() == f.read_bytes()


async def test_a_server_with_the_wrong_certificate_is_refused(put_server, tls: dict[str, Path],
                                                              tmp_path: Path) -> None:
    impostor = put_server(tls_files=make_tls(tmp_path / "other-ca", ["127.0.0.1"]))  # another CA's cert
    f = tmp_path / "seg.mp4"
    f.write_bytes(os.urandom(10_000))
    with Queue(tmp_path / "q.db") as queue:
        up = Uploader(queue, {"cloud": target(impostor, tls, timeout=3)}, hub_id="car", retry_first=0.2)
        up.add(f)
        assert await drain(up) == "unreachable"
        assert queue.pending() == (1, 10_000)  # kept for a trustworthy server
    assert not any(impostor.root.rglob("*"))


async def test_without_a_client_cert_the_server_refuses(put_server, tls: dict[str, Path], tmp_path: Path) -> None:
    server = put_server()
    f = tmp_path / "seg.mp4"
    f.write_bytes(os.urandom(10_000))
    anonymous = HttpsTarget("cloud", url=f"https://127.0.0.1:{server.port}/{{name}}", ca=str(tls["ca"]), timeout=3)
    with Queue(tmp_path / "q.db") as queue:
        up = Uploader(queue, {"cloud": anonymous}, hub_id="car", retry_first=0.2)
        up.add(f)
        assert await drain(up) == "unreachable"
        assert queue.pending() == (1, 10_000)
    assert not (server.root / "seg.mp4").exists()
