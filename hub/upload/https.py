"""HTTPS target: `PUT` of the whole file to a URL from a template, over asyncio streams and `ssl`.

The server certificate is always verified (against `ca`, else the system store) and its name checked;
a client certificate is sent when `cert`/`key` are given. A PUT replaces what the URL held, so a retry
after a crash replaces a partial file and never makes a second one. The request carries
`Repr-Digest: sha-256=:…:` (RFC 9530); verification is `sha256` when the reply echoes a matching
`Repr-Digest`/`Digest` header or an ETag equal to the hex SHA-256, else `size` (the server took the
whole `Content-Length` and answered 2xx).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
from typing import Any
from urllib.parse import quote, urlsplit

from hub.upload import UploadError
from hub.upload.transfer import Transfer

_DIGEST = re.compile(r"sha-256=:?([A-Za-z0-9+/=]+):?", re.IGNORECASE)


class HttpsTarget:
    """`HttpsTarget(name, url="https://nas/dashcam/{hub}/{name}", [ca, cert, key, timeout])`."""

    kind = "https"

    def __init__(self, name: str, *, url: str, ca: str | None = None, cert: str | None = None,
                 key: str | None = None, timeout: float = 10.0, **_: Any) -> None:
        self.name = name
        self.template = url
        parts = urlsplit(url.replace("{", "").replace("}", ""))
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"expected an https:// URL, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 443
        self.timeout = float(timeout)
        self.ssl = ssl.create_default_context(cafile=ca)  # verifies the server and its name, always
        if cert:
            self.ssl.load_cert_chain(cert, key)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def open(self) -> None:
        """A TLS handshake as a reachability check (each upload then uses its own connection)."""
        _, writer = await self._connect()
        await _close(writer)

    async def close(self) -> None:
        """Nothing is kept open between uploads."""

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.open_connection(self.host, self.port, ssl=self.ssl, server_hostname=self.host)
        except ssl.SSLCertVerificationError as exc:
            raise UploadError(self.name, f"{self.host}:{self.port} has a certificate we do not trust: "
                              f"{exc.verify_message}") from exc
        except (OSError, TimeoutError) as exc:
            raise UploadError(self.name, f"cannot reach {self.host}:{self.port}: {exc}", reachable=False) from exc

    async def upload(self, t: Transfer) -> str:
        return await self.send(t)

    async def finish(self, items: list[tuple[Transfer, str]]) -> list[str | UploadError]:
        """Nothing left to do: each PUT's answer was its verification."""
        return [held for _, held in items]

    async def send(self, t: Transfer) -> str:
        """PUT the whole file; the verification its answer allows (`sha256` or `size`)."""
        url = urlsplit(t.remote)
        digest = base64.b64encode(bytes.fromhex(t.item.sha256 or "")).decode() if t.item.sha256 else None
        head = [f"PUT {quote(url.path or '/')}{'?' + url.query if url.query else ''} HTTP/1.1",
                f"Host: {url.netloc}", f"Content-Length: {t.size}", "Content-Type: application/octet-stream",
                "Connection: close"]
        if digest:
            head.append(f"Repr-Digest: sha-256=:{digest}:")
        reader, writer = await self._connect()
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
            t.checkpoint(0)  # a PUT always starts over
            async for pos, data in t.chunks(0):
                writer.write(data)
                await writer.drain()
                t.progress(pos + len(data))
            async with asyncio.timeout(self.timeout):
                status, headers = await _response(reader)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise UploadError(self.name, f"PUT {t.remote}: connection lost: {exc}", reachable=False) from exc
        finally:
            await _close(writer)
        if not 200 <= status < 300:
            raise UploadError(self.name, f"PUT {t.remote}: HTTP {status}")
        echoed = headers.get("repr-digest") or headers.get("digest")
        m = _DIGEST.search(echoed or "")
        etag = headers.get("etag", "").strip('"').lower()
        if (m and m.group(1) == digest) or (t.item.sha256 and etag == t.item.sha256):
            return "sha256"
        if m or (etag and len(etag) == 64):
            raise UploadError(self.name, f"PUT {t.remote}: the server's digest does not match ours")
        return "size"


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a TLS connection without hanging on a peer that never answers the close."""
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):  # ssl.SSLError is an OSError
        async with asyncio.timeout(2):
            await writer.wait_closed()


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Status and headers of an HTTP/1.1 response (the body, if any, is not needed)."""
    status_line = (await reader.readline()).decode("latin-1")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise OSError(f"not an HTTP response: {status_line[:60]!r}") from None
    headers: dict[str, str] = {}
    while (line := (await reader.readline()).decode("latin-1").strip()):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers
