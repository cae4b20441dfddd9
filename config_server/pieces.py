"""The configuration exchange's wire format (docs/PROTOCOL.md section 4), both sides.

The server side turns a DeviceConfig into bodies, a version and pieces; the node side (`Reassembler`)
is what the tests, the boot-storm bench and the simulation use to take a config the way a node does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Any

from config_server.devicefile import DeviceConfig

MIN_PIECE = 128
"""The smallest `max` we honour: a header alone takes ~60 bytes."""
MAX_PIECE = 1 << 20
_VERSION = re.compile(r"(\d{1,9})-([0-9a-f]{8})")


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Assembled:
    """A config's bodies in order, and the SHA-256 of their concatenation."""

    bodies: tuple[tuple[str, bytes], ...]
    digest: str

    @property
    def hash8(self) -> str:
        return self.digest[:8]

    @property
    def size(self) -> int:
        return sum(len(b) for _, b in self.bodies)


def assemble(config: DeviceConfig) -> Assembled:
    bodies = [("_settings", compact(config.settings)), ("_order", compact(config.order))]
    bodies += [(name, compact(config.components[name])) for name in config.order]
    sha = hashlib.sha256()
    for _, body in bodies:
        sha.update(body)
    return Assembled(tuple(bodies), sha.hexdigest())


def version(counter: int, hash8: str) -> str:
    return f"{counter}-{hash8}"


def parse_version(v: Any) -> tuple[int, str] | None:
    """(counter, hash8) of a version string, None when it is not one."""
    if isinstance(v, str) and (m := _VERSION.fullmatch(v)):
        return int(m[1]), m[2]
    return None


def signature(key: bytes, device_id: str, v: str, assembled: Assembled) -> str:
    """Section 4.5: HMAC-SHA256 under the device's key of `<id>\\n<v>\\n<assembled config>`."""
    mac = hmac.new(key, f"{device_id}\n{v}\n".encode(), hashlib.sha256)
    for _, body in assembled.bodies:
        mac.update(body)
    return "hmac-sha256:" + mac.hexdigest()


def pieces(assembled: Assembled, v: str, max_bytes: int, sig: str | None = None) -> list[bytes]:
    """The payloads of the reply, each at most `max_bytes` (clamped to MIN_PIECE…MAX_PIECE), header included."""
    limit = min(max(max_bytes, MIN_PIECE), MAX_PIECE)
    chunks: list[tuple[str, bytes]] = []
    for name, body in assembled.bodies:
        # The worst-case header for this name (large i and n) leaves the room for the body.
        room = limit - len(_header(v, 99999, 99999, name, sig if not chunks else None)) - 1
        if room < 16:
            room = 16  # a component name near the piece size: exceed max rather than never finish
        for start in range(0, max(len(body), 1), room):
            chunks.append((name, body[start : start + room]))
    n = len(chunks)
    return [_header(v, i, n, name, sig if i == 0 else None) + b"\n" + body for i, (name, body) in enumerate(chunks)]


def unchanged(v: str) -> bytes:
    return compact({"v": v, "unchanged": True})


def _header(v: str, i: int, n: int, name: str, sig: str | None) -> bytes:
    head: dict[str, Any] = {"v": v, "i": i, "n": n, "name": name}
    if sig:
        head["sig"] = sig
    return compact(head)


@dataclass
class PieceError(Exception):
    """A piece that does not fit the set being received."""

    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass
class Received:
    """A whole config as a node receives it."""

    v: str
    unchanged: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    components: dict[str, Any] = field(default_factory=dict)
    sig: str | None = None
    digest: str = ""
    pieces: int = 0


class Reassembler:
    """The node's side of section 4.3: feed each payload; a whole config comes back once complete.

    A piece out of order or of another version raises PieceError and abandons the set, as a node does.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._v: str | None = None
        self._next = 0
        self._n = 0
        self._bodies: list[tuple[str, bytearray]] = []
        self._sig: str | None = None

    def feed(self, payload: bytes) -> Received | None:
        head_raw, _, body = payload.partition(b"\n")
        try:
            head = json.loads(head_raw)
        except ValueError:
            self._reset()
            raise PieceError("header is not JSON") from None
        if not isinstance(head, dict) or not isinstance(head.get("v"), str):
            self._reset()
            raise PieceError("header has no version")
        if head.get("unchanged") is True:
            self._reset()
            return Received(head["v"], unchanged=True)
        i, n, name = head.get("i"), head.get("n"), head.get("name")
        if not (isinstance(i, int) and isinstance(n, int) and isinstance(name, str) and 0 <= i < n):
            self._reset()
            raise PieceError(f"bad header {head_raw[:80]!r}")
        if i == 0:
            self._reset()
            self._v, self._n, self._sig = head["v"], n, head.get("sig")
        elif head["v"] != self._v or i != self._next or n != self._n:
            expected = self._next
            self._reset()
            raise PieceError(f"piece {i} of {head['v']} while expecting piece {expected} of {self._v}")
        if self._bodies and self._bodies[-1][0] == name and i > 0:
            self._bodies[-1][1].extend(body)  # a body split over consecutive pieces
        else:
            self._bodies.append((name, bytearray(body)))
        self._next = i + 1
        if self._next < self._n:
            return None
        return self._finish()

    def _finish(self) -> Received:
        assert self._v is not None
        got = Received(self._v, sig=self._sig, pieces=self._n)
        sha = hashlib.sha256()
        try:
            for name, body in self._bodies:
                sha.update(body)
                value = json.loads(body)
                if name == "_settings":
                    got.settings = value
                elif name == "_order":
                    got.order = value
                else:
                    got.components[name] = value
        except ValueError as e:
            raise PieceError(f"a body is not JSON: {e}") from None
        finally:
            self._reset()
        got.digest = sha.hexdigest()
        parsed = parse_version(got.v)
        if parsed is None or parsed[1] != got.digest[:8]:
            raise PieceError(f"version {got.v} does not match the content's hash {got.digest[:8]}")
        return got
