# The node's MQTT 3.1.1 client: asyncio streams, one link kept alive for the node's whole life.
#
# MicroPython first (ESP32, ESP8266, the unix port); it also imports under CPython so that the
# packet code and topic matching can be unit-tested fast. On an ESP8266 it must be frozen or
# precompiled (.mpy): compiling this source needs more heap than that chip has. Design notes:
# - Long-running tasks: the keeper (start() to close()) connects and, per connection, starts a
#   reader and a ticker (acks timing out, keepalive pings, dead-link detection) that end with that
#   link; it restores subscriptions, flushes what was queued while offline, runs on_connect, and
#   reconnects with capped exponential backoff and jitter. Nothing the link does raises into callers.
# - Packets are assembled in and read into buffers allocated once; a message leaves behind its
#   topic string, its payload bytes and a few coroutine frames (bench/node_mqtt.py measures it).
#   Incoming packets above `max_packet` are read and discarded in small chunks.
# - Persistent session by default, so QoS 1 commands sent while the node was away still reach it.
import asyncio
from random import getrandbits

try:
    from micropython import const
except ImportError:  # CPython, for the unit tests
    def const(x):
        return x

try:
    from time import ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython
    from time import monotonic

    def ticks_ms():
        return int(monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b

try:
    _sleep_ms = asyncio.sleep_ms
except AttributeError:  # CPython
    def _sleep_ms(ms):
        return asyncio.sleep(ms / 1000)

# Packet types (first byte, flags included where they are fixed).
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_PUBREC = const(0x50)
_PUBCOMP = const(0x70)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_UNSUBSCRIBE = const(0xA2)
_UNSUBACK = const(0xB0)
_PINGRESP = const(0xD0)
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"

_RBUF = const(256)  # incoming packets up to this size are read in one go into a preallocated buffer
_OBUF = const(256)  # outgoing PUBLISH packets up to this size are assembled and written in one go
_SEEN = const(32)  # QoS 1 messages remembered, so a DUP redelivery of one already taken is dropped
_RX1 = const(16)  # incoming QoS 1 messages held unacknowledged before the reader waits for the consumer
_RX1_MAX = const(64)  # … and the most it ever holds (beyond queue_len's QoS 0 ones)
_RX1_WAIT = const(1000)  # ms the reader waits for the consumer
_RETRIES = const(2)  # resends (with DUP) of an unacknowledged QoS 1 PUBLISH before the link is called dead
_STABLE_MS = const(30000)  # a link that lived this long resets the backoff
_REFUSED = ("", "unacceptable protocol version", "client id rejected", "server unavailable",
            "bad user name or password", "not authorised")


def put_length(buf, i, n):
    """Write the MQTT remaining length `n` into `buf` at `i`; return the index after it."""
    while True:
        d = n & 0x7F
        n >>= 7
        buf[i] = d | 0x80 if n else d
        i += 1
        if not n:
            return i


def _mqtt_str(s):
    if isinstance(s, str):
        s = s.encode()
    return bytes((len(s) >> 8, len(s) & 0xFF)) + s


def _packet(first, body):
    head = bytearray(5)
    head[0] = first
    return bytes(head[:put_length(head, 1, len(body))]) + body


def connect_packet(client_id, keepalive=60, clean_session=False, will=None, user=None, password=None):
    """The CONNECT packet, as bytes. `will` is (topic, msg, retain, qos)."""
    flags = 0x02 if clean_session else 0
    body = _mqtt_str(client_id)
    if will:
        flags |= 0x04 | (will[3] & 3) << 3 | (0x20 if will[2] else 0)
        body += _mqtt_str(will[0]) + _mqtt_str(will[1])
    if user is not None:
        flags |= 0x80
        body += _mqtt_str(user)
        if password is not None:  # 3.1.1 allows a password only with a user name
            flags |= 0x40
            body += _mqtt_str(password)
    vh = b"\x00\x04MQTT\x04" + bytes((flags, keepalive >> 8, keepalive & 0xFF))
    return _packet(0x10, vh + body)


def subscribe_packet(pid, topic_filter, qos):
    return _packet(_SUBSCRIBE, bytes((pid >> 8, pid & 0xFF)) + _mqtt_str(topic_filter) + bytes((qos,)))


def unsubscribe_packet(pid, topic_filter):
    return _packet(_UNSUBSCRIBE, bytes((pid >> 8, pid & 0xFF)) + _mqtt_str(topic_filter))


def check_topic(t, wildcards):
    """Why `t` is no valid topic name (`wildcards` False) or filter (True); None when it is valid."""
    if not t:
        return "empty topic"
    prev = "/"
    last = len(t) - 1
    for i, c in enumerate(t):
        if c == "+" or c == "#":
            if not wildcards:
                return "wildcard %s in topic name %s" % (c, t)
            if prev != "/" or (c == "#" and i != last):
                return "misplaced %s in topic filter %s" % (c, t)
        elif (prev == "+" or prev == "#") and c != "/":
            return "misplaced %s in topic filter %s" % (prev, t)
        elif c == "\x00":
            return "NUL in topic %s" % t
        prev = c
    return None


def topic_matches(f, t):
    """MQTT filter matching: `+` one level, `#` the rest (its parent too); `$` topics need a literal start."""
    if t[:1] == "$" and f[:1] in ("+", "#"):
        return False
    i = j = 0
    lf = len(f)
    lt = len(t)
    while i < lf:
        c = f[i]
        if c == "#":
            return True
        if c == "+":
            while j < lt and t[j] != "/":
                j += 1
        elif j < lt and t[j] == c:
            j += 1
        else:
            return j == lt and f[i:] == "/#"  # "a/#" matches "a"
        i += 1
    return j == lt


class _Ring:
    # A fixed-size FIFO on a preallocated list (collections.deque is not in every port).
    def __init__(self, size):
        self._a = [None] * max(1, size)
        self._h = 0
        self.n = 0

    def push(self, item):
        """Append; when full the oldest item is dropped to make room and returned."""
        a = self._a
        size = len(a)
        old = None
        if self.n == size:
            old = a[self._h]
            self._h = (self._h + 1) % size
            self.n -= 1
        a[(self._h + self.n) % size] = item
        self.n += 1
        return old

    def push_front(self, item):
        """Put back at the head; False when full (the item, being the oldest, is the one dropped)."""
        a = self._a
        if self.n == len(a):
            return False
        self._h = (self._h - 1) % len(a)
        a[self._h] = item
        self.n += 1
        return True

    def pop(self):
        a = self._a
        item = a[self._h]
        a[self._h] = None
        self._h = (self._h + 1) % len(a)
        self.n -= 1
        return item


def _why(e):
    # On one line: mbedtls reports a certificate that does not verify as several ("\nThe certificate is
    # not correctly signed by the trusted CA\n"), which would leave the log line saying only "ValueError".
    return "%s %s" % (type(e).__name__, " ".join(str(e).split()))


def _print_log(level, msg):
    print("mqtt %s: %s" % (level, msg))


class MQTTClient:
    """A resilient MQTT 3.1.1 client: start() once, then publish/subscribe and `async for` messages.

    will: (topic, msg, retain, qos); with a will, b"online" is published retained on the will topic
    after every (re)connect and b"offline" on close(). tls: None or dict(ca=path, verify=True,
    server_hostname=None, cert=None, key=None). on_connect: a coroutine function run after every
    (re)connect once subscriptions are restored. log: log(level, msg), level debug/info/warning/error.
    """

    def __init__(self, client_id, server, port=1883, user=None, password=None, keepalive=60,
                 clean_session=False, tls=None, will=None, queue_len=32, max_packet=4096,
                 on_connect=None, log=None, ack_timeout=10, connect_timeout=10,
                 backoff_min=1, backoff_max=60):
        self.client_id = client_id
        self.server = server
        self.port = port
        self._user = user
        self._password = password
        self._keepalive = keepalive
        self._clean = clean_session
        self._tls = tls
        if will:
            will = (will[0], will[1], bool(will[2]), will[3] if len(will) > 3 else 1)
            if isinstance(will[0], str):
                will = (will[0].encode(),) + will[1:]
        self._will = will
        self._max = max_packet
        self._on_connect = on_connect
        self._logf = log or _print_log
        self._ack_ms = int(ack_timeout * 1000)
        self._conn_s = connect_timeout
        self._backoff_min = int(backoff_min * 1000)
        self._backoff_max = int(backoff_max * 1000)
        self._rbuf = bytearray(_RBUF)
        self._rmv = memoryview(self._rbuf)
        self._mv2 = self._rmv[:2]  # every packet starts with at least 2 bytes
        self._obuf = bytearray(_OBUF)
        self._omv = memoryview(self._obuf)
        self._abuf = bytearray(4)  # PUBACK
        self._q = _Ring(queue_len)  # outgoing while offline: (topic bytes, msg, retain, qos, pid)
        # Incoming, for `async for`: (topic, msg, retained, pid, link). A QoS 1 message is acknowledged
        # only when the consumer takes it, so the broker's in-flight window holds back a flood and no
        # accepted QoS 1 message is ever dropped here; QoS 0 beyond queue_len is dropped on arrival.
        self._inbox = _Ring(queue_len + _RX1_MAX)
        self._rx0 = 0  # QoS 0 messages in the inbox
        self._rx0_max = queue_len
        self._seen = [0] * _SEEN  # keys (packet id + hash) of the last QoS 1 messages received
        self._seen_i = 0
        self._rxev = asyncio.Event()
        self._ready = asyncio.Event()  # connected, subscriptions restored, queue flushed
        self._down = asyncio.Event()  # the current link is gone
        self._wbusy = 0  # the link number while a task writes a packet on it
        self._wfree = asyncio.Event()  # set when it is done
        self._recs = []  # ack records for reuse
        self._subs = {}  # filter -> qos: what we want
        self._confirmed = set()  # filters the broker acknowledged in the session it holds for us
        self._unsub_todo = set()  # unsubscribed while offline, still in the broker's session
        self._pending = {}  # packet id -> [Event, result, deadline]: awaited acks, ids of requeued messages
        self._pid = 0
        self._gen = 0  # counts connections, so a stale task cannot drop a newer link
        self._up = False
        self._flushing = False
        self._closing = False
        self._closed = False
        self._r = self._w = None
        self._rinto = False
        self._sock = None
        self._task = self._rtask = self._ptask = None  # keeper, reader, ticker
        self._last_rx = self._last_tx = self._last_ping = 0
        self._ever = False
        self._qdrops = 0
        self.reconnects = 0
        self.dropped = 0  # outgoing messages dropped by the full offline queue
        self.rx = 0
        self.tx = 0
        self.skipped = 0  # incoming messages above max_packet (or QoS 2)
        self.malformed = 0
        self.foreign = 0  # incoming messages that match none of our subscriptions
        self.rx_dropped = 0  # incoming messages dropped because nobody read them fast enough
        self.redelivered = 0  # DUP redeliveries of QoS 1 messages already handled, dropped
        self.last_connect_ms = None  # how long the last successful connect took

    # --- public API -----------------------------------------------------------------------------

    def start(self):
        if self._task is None:
            self._closing = self._closed = False
            # The "mqtt-keeper" task (MicroPython's create_task takes no name): started here, once;
            # connects, reconnects and restores the session until close() cancels it.
            self._task = _named(self._keep(), "mqtt-keeper")
        return self._task

    def isconnected(self):
        return self._up

    async def wait_connected(self, timeout=None):
        if self._ready.is_set():
            return True
        if timeout is None:
            await self._ready.wait()
            return True
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def stats(self):
        return {"reconnects": self.reconnects, "dropped": self.dropped, "rx": self.rx, "tx": self.tx,
                "skipped": self.skipped, "malformed": self.malformed, "foreign": self.foreign,
                "rx_dropped": self.rx_dropped, "redelivered": self.redelivered, "queued": self._q.n,
                "last_connect_ms": self.last_connect_ms}

    async def publish(self, topic, msg, retain=False, qos=0):
        """Send now (QoS 1: until PUBACK) or queue while offline. True when sent, False when queued."""
        if qos == 2:
            self._log("error", "QoS 2 is not supported: message on %s not sent" % topic)
            return False
        if isinstance(topic, str):
            topic = topic.encode()
        if not topic or b"+" in topic or b"#" in topic:
            raise ValueError("invalid topic name %r" % topic)
        if isinstance(msg, str):
            msg = msg.encode()
        retain = 1 if retain else 0
        qos = 1 if qos else 0
        if not self._up or self._flushing or self._q.n:
            self._enqueue((topic, msg, retain, qos, 0))
            return False
        if not qos and await self._send(self._gen, _PUBLISH, topic, msg, 0, retain):
            self.tx += 1  # the QoS 0 fast path: one coroutine frame less per message
            return True
        return await self._publish_now(topic, msg, retain, qos, 0, True)

    async def subscribe(self, topic, qos=1):
        """Subscribe now and after every reconnect. False when the broker refused or the link is down."""
        if isinstance(topic, bytes):
            topic = topic.decode()
        why = check_topic(topic, True)
        if why:
            raise ValueError(why)
        if qos == 2:
            self._log("error", "QoS 2 is not supported: subscribing %s with QoS 1" % topic)
        qos = 1 if qos else 0
        self._subs[topic] = qos
        self._confirmed.discard(topic)
        self._unsub_todo.discard(topic)
        if self._up:
            return await self._request(self._gen, _SUBSCRIBE, topic, qos)
        return False

    async def unsubscribe(self, topic):
        if isinstance(topic, bytes):
            topic = topic.decode()
        self._subs.pop(topic, None)
        self._confirmed.discard(topic)
        self._unsub_todo.add(topic)  # until the broker acknowledges it
        if self._up:
            return await self._request(self._gen, _UNSUBSCRIBE, topic, 0)
        return False

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self._inbox.n:
            if self._closed:
                raise StopAsyncIteration
            self._rxev.clear()
            await self._rxev.wait()
        topic, msg, retained, pid, gen = self._inbox.pop()
        if not pid:
            self._rx0 -= 1
        elif gen == self._gen:  # on a newer link the broker resends it (DUP) and that copy is acked
            await self._send(gen, _PUBACK, None, pid=pid)
        return topic, msg, retained

    async def close(self):
        """Say `offline` (with a will), disconnect cleanly and stop every task of the client."""
        self._closing = True
        gen = self._gen
        if self._up:
            if self._will:
                await self._publish_now(self._will[0], b"offline", 1, 1, 0, False)
            await self._send(gen, 0, _DISCONNECT)
        self._up = False
        if self._q.n:
            self._log("warning", "closed with %d messages still queued" % self._q.n)
        for t in (self._task, self._rtask, self._ptask):
            if t is not None:
                t.cancel()
        self._task = None
        self._teardown()
        self._ready.clear()
        self._closed = True
        self._rxev.set()

    # --- the connection keeper ----------------------------------------------------------------

    async def _keep(self):
        attempt = 0
        while not self._closing:
            try:
                attempt = await self._session(attempt)
            except Exception as e:  # a MemoryError or a bug must never end the keeper
                self._log("error", "connection keeper: %s" % _why(e))
                self._up = False
                self._teardown()
                await self._backoff(attempt)
                attempt += 1

    async def _session(self, attempt):
        """Connect, run one link until it drops, wait out the backoff; returns the next attempt number."""
        t0 = ticks_ms()
        try:
            session = await self._connect()
        except Exception as e:  # OSError, timeout, refused: all mean "try again later"
            self._log("warning", "cannot connect to %s:%d: %s" % (self.server, self.port, _why(e)))
            await self._backoff(attempt)
            return attempt + 1
        up_at = ticks_ms()
        self.last_connect_ms = ticks_diff(up_at, t0)
        if self._ever:
            self.reconnects += 1
        self._ever = True
        self._log("info", "connected to %s:%d in %d ms (%s)" % (
            self.server, self.port, self.last_connect_ms, "session resumed" if session else "new session"))
        gen = self._gen
        # The "mqtt-reader" task: started here after each CONNACK; ends when this link drops.
        self._rtask = _named(self._read_loop(gen), "mqtt-reader")
        # The "mqtt-ticker" task: started here after each CONNACK; ends when this link drops.
        self._ptask = _named(self._tick_loop(gen), "mqtt-ticker")
        if await self._resume(gen, session):
            self._ready.set()
            if self._on_connect:
                # The "mqtt-on-connect" task: started after each (re)connect; ends when the
                # callback returns. A task, so a slow callback never delays noticing a dead link.
                _named(self._run_on_connect(), "mqtt-on-connect")
        await self._down.wait()
        self._teardown()
        if ticks_diff(ticks_ms(), up_at) >= _STABLE_MS:
            attempt = 0
        if not self._closing:
            await self._backoff(attempt)
            attempt += 1
        return attempt

    async def _connect(self):
        self._gen += 1
        self._down.clear()
        kw = {}
        if self._tls is not None:
            kw["ssl"] = self._ssl_context()
            kw["server_hostname"] = self._tls.get("server_hostname") or self.server
        r, w = await asyncio.wait_for(asyncio.open_connection(self.server, self.port, **kw), self._conn_s)
        _nodelay(w)
        try:
            w.write(connect_packet(self.client_id, self._keepalive, self._clean, self._will,
                                   self._user, self._password))
            await w.drain()
            self._r = r
            self._rinto = hasattr(r, "readinto")
            self._sock = getattr(r, "s", None)  # MicroPython's Stream: the non-blocking socket under it
            b = self._rbuf
            await asyncio.wait_for(self._fill(self._rmv[:4]), self._conn_s)
            if b[0] != _CONNACK or b[1] != 2:
                raise ValueError("expected CONNACK, got packet type 0x%02x" % b[0])
            if b[3]:
                rc = b[3]
                raise OSError("broker refused: %s" % (_REFUSED[rc] if rc < len(_REFUSED) else rc))
        except BaseException:
            self._r = None
            _close(w)
            raise
        self._w = w
        self._last_rx = self._last_tx = self._last_ping = ticks_ms()
        self._up = True
        return bool(b[2] & 1) and not self._clean

    async def _resume(self, gen, session):
        """Say online, restore subscriptions, send what was queued. False when the link dropped meanwhile."""
        self._flushing = True
        try:
            if self._will and not await self._publish_now(self._will[0], b"online", 1, 1, 0, False):
                return False
            if not session:
                self._confirmed.clear()
                for i in range(_SEEN):
                    self._seen[i] = 0
                self._unsub_todo.clear()
            for f in list(self._unsub_todo):
                if not await self._request(gen, _UNSUBSCRIBE, f, 0):
                    return False
            for f, qos in list(self._subs.items()):
                if f not in self._confirmed and not await self._request(gen, _SUBSCRIBE, f, qos):
                    return False
            if self._qdrops:
                self._log("warning", "the offline queue dropped %d oldest messages" % self._qdrops)
                self._qdrops = 0
            q = self._q
            while q.n:
                e = q.pop()
                if not await self._publish_now(e[0], e[1], e[2], e[3], e[4], True):
                    return False
            return True
        finally:
            self._flushing = False

    async def _run_on_connect(self):
        try:
            await self._on_connect()
        except Exception as e:
            self._log("error", "on_connect failed: %s" % _why(e))

    async def _backoff(self, attempt):
        ms = min(self._backoff_max, self._backoff_min << min(attempt, 16))
        # 75 % to 125 %: nodes that lost the same broker do not all come back in the same instant.
        ms = ms * (768 + getrandbits(9)) >> 10
        self._log("info", "reconnecting in %d ms" % ms)
        await _sleep_ms(ms)

    def _drop(self, gen, why, level="warning"):
        """The link `gen` is dead: wake everyone waiting on it; the keeper tears it down and reconnects."""
        if gen != self._gen or not self._up:
            return
        self._up = False
        self._ready.clear()
        if not self._closing:
            self._log(level, "connection lost: %s" % why)
        for rec in self._pending.values():
            rec[0].set()
        self._down.set()

    def _teardown(self):
        for t in (self._rtask, self._ptask):
            if t is not None:
                t.cancel()
        self._rtask = self._ptask = None
        w, self._w, self._r = self._w, None, None
        if w is not None:
            _close(w)
        # A writer still stuck on the old link (its drain times out) no longer holds the writer.
        self._wbusy = 0
        self._wfree.set()

    def _ssl_context(self):
        import ssl
        t = self._tls
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if not hasattr(ssl, "CERT_NONE"):
            # ESP8266: its TLS (axTLS) has no certificate checks at all; encrypted, but the broker unverified.
            if not self._ever:
                self._log("warning", "TLS without certificate verification: this board's TLS cannot verify the broker")
        elif t.get("verify", True):
            ctx.verify_mode = ssl.CERT_REQUIRED
            if t.get("ca"):
                ctx.load_verify_locations(cadata=_der(t["ca"]))
            elif hasattr(ctx, "load_default_certs"):
                ctx.load_default_certs()
        else:
            if hasattr(ctx, "check_hostname"):
                ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if t.get("cert"):
            if hasattr(ctx, "load_default_certs"):  # CPython takes file paths
                ctx.load_cert_chain(t["cert"], t.get("key"))
            else:  # MicroPython's mbedtls takes the data, as DER
                ctx.load_cert_chain(_der(t["cert"]), _der(t["key"]))
        return ctx

    # --- sending --------------------------------------------------------------------------------

    def _enqueue(self, entry):
        old = self._q.push(entry)
        if old is not None:
            self._lost(old)

    def _lost(self, entry):
        self.dropped += 1
        self._qdrops += 1
        if entry[4]:
            self._pending.pop(entry[4], None)

    def _newpid(self):
        pid = self._pid
        while True:
            pid = pid % 65535 + 1
            if pid not in self._pending:  # ids of unacknowledged and requeued messages stay reserved
                self._pid = pid
                return pid

    async def _wait_writer(self):
        while self._wbusy:
            self._wfree.clear()
            await self._wfree.wait()

    async def _send(self, gen, kind, data, msg=None, qos=0, retain=0, dup=0, pid=0):
        """Write one packet on link `gen`: a PUBLISH of topic `data`, a PUBACK of `pid`, or the
        whole packet `data`. False when the link is gone; never raises for link loss. One coroutine
        for all, and the packing in plain functions: each coroutine call costs a heap-allocated frame."""
        if self._wbusy:
            await self._wait_writer()
        w = self._w
        if gen != self._gen or not self._up or w is None:
            return False
        # A flag and an Event rather than asyncio.Lock (which allocates ~400 bytes per use). The
        # packet is packed into the shared buffers only once the writer is ours. The flag holds the
        # link number, so a writer left on a dead link cannot release the writer of the next one.
        self._wbusy = gen
        try:
            if kind == _PUBLISH:
                self._put_publish(w, data, msg, qos, retain, dup, pid)
            elif kind == _PUBACK:
                a = self._abuf
                a[0] = _PUBACK
                a[1] = 2
                a[2] = pid >> 8
                a[3] = pid & 0xFF
                w.write(a)
            else:
                w.write(data)
            if getattr(w, "out_buf", b"?"):  # CPython always drains; MicroPython when the socket took less
                # With a timeout: a dead link may never drain, and MicroPython does not wake a task
                # waiting on a socket that another task stopped waiting on.
                await asyncio.wait_for(w.drain(), self._ack_ms / 1000)
            else:
                await _sleep_ms(0)  # drain would yield here too: other tasks get their turn
        except Exception as e:  # OSError on MicroPython, ConnectionError on CPython
            self._drop(gen, "write failed: %s" % _why(e))
            return False
        finally:
            if self._wbusy == gen:
                self._wbusy = 0
                self._wfree.set()
        self._last_tx = ticks_ms()
        return True

    def _put_publish(self, w, topic, msg, qos, retain, dup, pid):
        o = self._obuf
        mv = self._omv
        tl = len(topic)
        ml = len(msg)
        o[0] = _PUBLISH | dup << 3 | qos << 1 | retain
        i = put_length(o, 1, 2 + tl + (2 if qos else 0) + ml)
        o[i] = tl >> 8
        o[i + 1] = tl & 0xFF
        end = i + 2 + tl + (2 if qos else 0)
        if end > _OBUF:  # a very long topic: written piece by piece
            w.write(mv[:i + 2])
            w.write(topic)
            if qos:
                o[0] = pid >> 8
                o[1] = pid & 0xFF
                w.write(mv[:2])
            w.write(msg)
            return
        o[i + 2:i + 2 + tl] = topic
        if qos:
            o[end - 2] = pid >> 8
            o[end - 1] = pid & 0xFF
        if end + ml <= _OBUF:  # the whole packet in one write
            o[end:end + ml] = msg
            w.write(mv[:end + ml])
        else:
            w.write(mv[:end])
            w.write(msg)

    async def _publish_now(self, topic, msg, retain, qos, pid, requeue):
        """Send one message; QoS 1 waits for PUBACK, resending with DUP. On link loss the message goes
        back to the head of the queue (when `requeue`) and False is returned."""
        gen = self._gen
        if not qos:
            if await self._send(gen, _PUBLISH, topic, msg, 0, retain):
                self.tx += 1
                return True
        else:
            dup = 1 if pid else 0  # a requeued message keeps its packet id and goes out as a duplicate
            if not pid:
                pid = self._newpid()
            rec = self._pending.get(pid)
            if rec is None:
                rec = self._pending[pid] = self._rec()
            tries = 0
            while gen == self._gen and self._up:
                self._arm(rec)
                if not await self._send(gen, _PUBLISH, topic, msg, 1, retain, dup, pid):
                    break
                if await self._wait_ack(rec):
                    self.tx += 1
                    self._recs.append(rec)  # the reader took it out of _pending
                    return True
                if gen != self._gen or not self._up:
                    break
                tries += 1
                if tries > _RETRIES:
                    self._drop(gen, "no PUBACK for packet %d after %d tries" % (pid, tries))
                    break
                self._log("warning", "no PUBACK for packet %d on %s; resending" % (pid, topic.decode()))
                dup = 1
            rec[2] = None  # nobody waits: a late PUBACK must not free the id of the requeued message
        if requeue and not self._closing:
            entry = (topic, msg, retain, qos, pid)
            if not self._q.push_front(entry):
                self._lost(entry)
        elif pid:
            self._pending.pop(pid, None)
        return False

    def _rec(self):
        """An ack record [Event, result]: reused, because an Event per QoS 1 message adds up."""
        if self._recs:
            return self._recs.pop()
        return [asyncio.Event(), None, None]  # event, result, deadline

    def _arm(self, rec):
        """Before sending: the reader takes acks only for armed records, the ticker times them out."""
        rec[0].clear()
        rec[1] = None
        rec[2] = ticks_add(ticks_ms(), self._ack_ms)

    async def _wait_ack(self, rec):
        """Wait for the ack of an armed `rec` (or the ticker's timeout, or link loss); True when it came."""
        if rec[1] is None:
            await rec[0].wait()
        rec[2] = None
        return rec[1] is not None

    async def _request(self, gen, kind, topic_filter, qos):
        """SUBSCRIBE or UNSUBSCRIBE one filter and wait for its ack. False on refusal or link loss."""
        pid = self._newpid()
        rec = self._pending[pid] = self._rec()
        self._arm(rec)
        if kind == _SUBSCRIBE:
            pkt = subscribe_packet(pid, topic_filter, qos)
        else:
            pkt = unsubscribe_packet(pid, topic_filter)
        ok = await self._send(gen, 0, pkt) and await self._wait_ack(rec)
        rec[2] = None
        self._pending.pop(pid, None)
        self._recs.append(rec)
        if not ok:
            if gen == self._gen and self._up:
                self._drop(gen, "no answer to %s %s" % ("SUBSCRIBE" if kind == _SUBSCRIBE else "UNSUBSCRIBE",
                                                         topic_filter))
            return False
        if kind == _UNSUBSCRIBE:
            self._unsub_todo.discard(topic_filter)
            return True
        if rec[1] == 0x80:
            self._log("error", "the broker refused the subscription to %s" % topic_filter)
            self._subs.pop(topic_filter, None)
            return False
        if topic_filter in self._subs:
            self._confirmed.add(topic_filter)
        return True

    # --- receiving ------------------------------------------------------------------------------

    async def _fill(self, mv):
        """Read exactly len(mv) bytes into mv."""
        r = self._r
        if not self._rinto:  # CPython's StreamReader has no readinto
            mv[:] = await r.readexactly(len(mv))
            return
        n = 0
        size = len(mv)
        while n < size:
            k = await r.readinto(mv[n:] if n else mv)
            if k is None:  # TLS: a record is not complete yet
                continue
            if not k:
                raise EOFError("closed by the broker")
            n += k

    async def _tick_loop(self, gen):
        # Ends ack waits that ran out of time (cheaper than asyncio.wait_for per QoS 1 message) and
        # keeps the link alive: pings go out after keepalive/2 without traffic, and a broker silent
        # for a whole keepalive is a dead link. Checked every <= keepalive/4, so a dead link is found
        # at most 1.25 x keepalive after the broker's last byte.
        k = self._keepalive * 1000
        half = k // 2
        step = min(max(self._ack_ms // 4, 100), max(k // 4, 100) if k else 5000, 5000)
        while gen == self._gen and self._up:
            await _sleep_ms(step)
            now = ticks_ms()
            for rec in self._pending.values():
                if rec[2] is not None and ticks_diff(now, rec[2]) >= 0:
                    rec[0].set()  # no result: the waiter resends or gives up
            if not k:
                continue
            idle = ticks_diff(now, self._last_rx)
            if idle > k:
                self._drop(gen, "no answer from the broker for %d ms: dead link" % idle)
                return
            if ticks_diff(now, self._last_ping) >= half and (
                    idle >= half or ticks_diff(now, self._last_tx) >= half):
                self._last_ping = now
                await self._send(gen, 0, _PINGREQ)

    def _take(self, mv):
        """Read into mv what the socket holds already, without waiting (and without the stream's
        coroutine, a heap-allocated frame per call). Returns the count, 0 when nothing is there."""
        s = self._sock
        if s is None:
            return 0
        k = s.readinto(mv)
        if k is None:  # nothing yet (or a partial TLS record)
            return 0
        if not k:
            raise EOFError("closed by the broker")
        return k

    async def _read_loop(self, gen):
        # One loop for every packet (a coroutine per packet would allocate a frame per packet).
        b = self._rbuf
        mv = self._rmv
        try:
            while gen == self._gen:
                k = self._take(self._mv2)
                if k < 2:
                    await self._fill(mv[k:2])
                kind = b[0]
                d = b[1]
                n = d & 0x7F
                shift = 7
                while d & 0x80:
                    if shift > 21:
                        raise ValueError("remaining length longer than 4 bytes")
                    await self._fill(mv[:1])
                    d = b[0]
                    n += (d & 0x7F) << shift
                    shift += 7
                self._last_rx = ticks_ms()
                if kind & 0xF0 == _PUBLISH:
                    await self._read_publish(gen, kind, n)
                    continue
                if n > _RBUF:
                    raise ValueError("packet type 0x%02x of %d bytes" % (kind, n))
                if n:
                    await self._fill(mv[:n])
                if kind == _PUBACK or kind == _UNSUBACK or kind == _SUBACK:
                    if n != 2 and not (kind == _SUBACK and n == 3):
                        raise ValueError("ack type 0x%02x of %d bytes" % (kind, n))
                    rec = self._pending.get(b[0] << 8 | b[1])
                    if rec is not None and rec[1] is None and rec[2] is not None:
                        rec[1] = b[2] if kind == _SUBACK else 0
                        rec[0].set()
                        if kind == _PUBACK:
                            self._pending.pop(b[0] << 8 | b[1])
                elif kind == _PINGRESP and not n:
                    pass
                elif _PUBREC <= kind & 0xF0 <= _PUBCOMP:
                    raise ValueError("QoS 2 packet type 0x%02x, but we never use QoS 2" % kind)
                else:
                    raise ValueError("unexpected packet type 0x%02x (%d bytes)" % (kind, n))
        except ValueError as e:  # UnicodeError is one too
            self.malformed += 1
            self._drop(gen, "malformed packet: %s" % e, "error")
        except Exception as e:
            self._drop(gen, "read failed: %s" % _why(e))

    async def _read_publish(self, gen, kind, n):
        qos = kind >> 1 & 3
        if qos == 3:
            raise ValueError("PUBLISH with QoS 3")
        if n < 3:
            raise ValueError("PUBLISH of %d bytes" % n)
        if n > self._max:
            return await self._skip(gen, qos, n)
        b = self._rbuf
        mv = self._rmv
        pl = 2 if qos else 0
        pid = 0
        if n <= _RBUF:
            k = self._take(mv[:n])
            if k < n:
                await self._fill(mv[k:n])
            tl = b[0] << 8 | b[1]
            i = 2 + tl
            if not tl or i + pl > n:
                raise ValueError("PUBLISH topic of %d bytes in a packet of %d" % (tl, n))
            topic = str(mv[2:i], "utf-8")
            if qos:
                pid = b[i] << 8 | b[i + 1]
            msg = bytes(mv[i + pl:n])
        else:
            await self._fill(mv[:2])
            tl = b[0] << 8 | b[1]
            if not tl or 2 + tl + pl > n:
                raise ValueError("PUBLISH topic of %d bytes in a packet of %d" % (tl, n))
            topic = str(await self._r.readexactly(tl), "utf-8")
            if qos:
                await self._fill(mv[:2])
                pid = b[0] << 8 | b[1]
            msg = await self._r.readexactly(n - 2 - tl - pl)
        if "+" in topic or "#" in topic:
            raise ValueError("PUBLISH to a wildcard topic %s" % topic)
        if qos == 2:
            self.skipped += 1
            self._log("error", "refused a QoS 2 message on %s: QoS 2 is not supported" % topic)
            return
        if qos:
            # A broker resends (DUP) a message whose PUBACK it never got, though we took it: a
            # TOGGLE would toggle twice. A small int key: packet id and a 14-bit hash of the message.
            key = pid | ((hash(topic) ^ hash(msg)) & 0x3FFF) << 16
            if kind & 8 and key in self._seen:
                await self._send(gen, _PUBACK, None, pid=pid)
                self.redelivered += 1
                self._log("info", "dropped a redelivery of packet %d on %s: already handled" % (pid, topic))
                return
            # Back-pressure: stop reading while the consumer catches up (Mosquitto 2.0 does not keep to
            # its in-flight window) — but not while a publish awaits its PUBACK, which sits behind this
            # message in the stream: that would deadlock the link. Then hold more, up to _RX1_MAX.
            t = ticks_ms()
            while (self._inbox.n - self._rx0 >= _RX1 and gen == self._gen and not self._awaiting_ack()
                   and ticks_diff(ticks_ms(), t) < _RX1_WAIT):
                await _sleep_ms(5)
            if self._inbox.n - self._rx0 >= _RX1_MAX:  # unacknowledged: the broker resends it on reconnect
                self.rx_dropped += 1
                self._log("error", "held %d unacknowledged messages: left packet %d on %s to the broker"
                          % (_RX1_MAX, pid, topic))
                return
            self._seen[self._seen_i] = key
            self._seen_i = (self._seen_i + 1) % _SEEN
        if not self._deliver(topic, msg, bool(kind & 1), pid, gen) and qos:
            await self._send(gen, _PUBACK, None, pid=pid)  # not for us: acknowledge and forget
        # Let the consumer (and every other task) run before the next message: the socket may
        # hold many, and reading them all at once would overflow the incoming queue.
        await _sleep_ms(0)

    async def _skip(self, gen, qos, n):
        """Read an oversized PUBLISH in small chunks and forget it; acknowledge it so it is not resent."""
        b = self._rbuf
        mv = self._rmv
        topic = "?"
        pid = 0
        left = n
        if n >= 2:
            await self._fill(mv[:2])
            tl = b[0] << 8 | b[1]
            left -= 2
            if tl <= _RBUF and tl + (2 if qos else 0) <= left:
                await self._fill(mv[:tl])
                left -= tl
                try:
                    topic = str(mv[:tl], "utf-8")
                except ValueError:
                    pass
                if qos:
                    await self._fill(mv[:2])
                    pid = b[0] << 8 | b[1]
                    left -= 2
        while left:
            k = min(left, _RBUF)
            await self._fill(mv[:k])
            left -= k
        self.skipped += 1
        self._log("warning", "skipped a %d-byte message on %s: larger than max_packet %d" % (n, topic, self._max))
        if qos == 1:
            await self._send(gen, _PUBACK, None, pid=pid)

    def _awaiting_ack(self):
        for rec in self._pending.values():
            if rec[2] is not None:  # a deadline: somebody waits for this ack
                return True
        return False

    def _deliver(self, topic, msg, retained, pid, gen):
        """Queue a message for `async for`; False when it is dropped."""
        for f in self._subs:
            if topic_matches(f, topic):
                break
        else:  # some brokers send messages of old or other subscriptions
            self.foreign += 1
            self._log("warning", "dropped a message on %s: it matches none of our subscriptions" % topic)
            return False
        if retained and topic.endswith("/set"):
            self._log("info", "ignored a retained command on %s" % topic)
            return False
        if not pid:
            if self._rx0 >= self._rx0_max:
                self.rx_dropped += 1
                self._log("warning", "incoming queue full: dropped a QoS 0 message on %s" % topic)
                return False
            self._rx0 += 1
        self.rx += 1
        self._inbox.push((topic, msg, retained, pid, gen))
        self._rxev.set()
        return True

    def _log(self, level, msg):
        try:
            self._logf(level, msg)
        except Exception as e:  # a broken logger must not take the link down
            print("mqtt log failed:", e, msg)


def _der(path):
    """A certificate or key file as DER: MicroPython's mbedtls takes them only so (CPython's
    load_verify_locations does too)."""
    with open(path, "rb") as f:
        data = f.read()
    begin = data.find(b"-----BEGIN")
    if begin < 0:
        return data
    from binascii import a2b_base64
    body = data[data.find(b"\n", begin) + 1:data.find(b"-----END", begin)]  # the first certificate
    return a2b_base64(b"".join(line.strip() for line in body.split(b"\n")))


def _named(coro, name):
    t = asyncio.create_task(coro)
    if hasattr(t, "set_name"):  # CPython; MicroPython tasks have no names
        t.set_name(name)
    return t


def _nodelay(w):
    # Nagle's algorithm would hold a small packet back until the broker ACKs the one before (~40 ms with
    # delayed ACKs: a /set -> state round trip took 44 ms). CPython's asyncio turns it off; MicroPython's
    # streams do not.
    try:
        w.s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    except Exception:  # a TLS wrapper or a port without the option: Nagle stays on
        pass


def _close(w):
    try:
        w.close()
    except Exception:  # the socket may be dead already
        pass
