# The node's MQTT 3.1.1 client: asyncio, one link kept alive for the node's whole life.
#
# MicroPython (ESP32, ESP8266, the unix port). Under CPython only the packet functions and topic
# rules are used (fast unit tests); the client itself parks tasks the way MicroPython's asyncio does.
# On an ESP8266 it must be frozen or precompiled (.mpy): compiling this source needs more heap than
# that chip has. Design notes:
# - Long-running tasks: the keeper (start() to close()) connects and, per connection, starts a
#   reader and a ticker (acks timing out, keepalive pings, dead-link detection) that end with that
#   link; it restores subscriptions, flushes what was queued while offline, runs on_connect, and
#   reconnects with capped exponential backoff and jitter. Nothing the link does raises into callers.
# - A message allocates nothing beyond its payload: packets are assembled in and read into buffers
#   allocated once and go straight to and from the socket; a received message is its topic string and
#   payload bytes. Awaiting costs no coroutine frame either: publish() returns a preallocated
#   awaitable (_TRUE, or an _Out record from a pool), `async for` takes messages through one _Next
#   object, and reads wait through one _Reader; each ends with a preallocated StopIteration, as
#   MicroPython's own asyncio.sleep_ms does. bench/node_mqtt.py measures it, tests/test_node_mqtt.py
#   holds it. Only rare paths allocate: a packet split across TCP segments, a socket that takes
#   only part of a packet, reconnects, and messages queued while offline.
# - Incoming packets above `max_packet` are read and discarded in small chunks.
# - Persistent session by default, so QoS 1 commands sent while the node was away still reach it.
import asyncio
from array import array
from random import getrandbits

try:
    from micropython import const
except ImportError:  # CPython, for the unit tests
    def const(x):
        return x

try:
    from asyncio import core as _core, sleep_ms as _sleep_ms
    from time import ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython: the client does not run there
    pass

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

_RBUF = const(16)  # incoming packets other than PUBLISH (acks, 2 to 4 bytes) are read into this buffer
_OBUF = const(256)  # outgoing PUBLISH packets up to this size are assembled and written in one go
_SEEN = const(32)  # QoS 1 messages remembered, so a DUP redelivery of one already taken is dropped
_RX1 = const(16)  # incoming QoS 1 messages held unacknowledged before the reader waits for the consumer
_RX1_MAX = const(48)  # … and the most it ever holds (QoS 0 and 1 share max(queue_len, _RX1_MAX) places)
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
    if t.startswith("$") and (f.startswith("+") or f.startswith("#")):
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
            return j == lt and i == lf - 2 and f.endswith("/#")  # "a/#" matches "a"
        i += 1
    return j == lt


class _Ring:
    # A fixed-size FIFO on preallocated storage, a list or an array (collections.deque is not in every
    # port). A popped list slot is cleared, so the ring holds no reference to what left it.
    def __init__(self, a):
        self._a = a
        self._blank = None if isinstance(a, list) else 0
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
        a[self._h] = self._blank
        self._h = (self._h + 1) % len(a)
        self.n -= 1
        return item

    def clear(self):
        while self.n:
            self.pop()


# --- awaiting without allocating -------------------------------------------------------------------
# MicroPython awaits any object through __iter__/__next__: __next__ returning None suspends the task,
# raising StopIteration(value) ends the await with that value. Each object below keeps its
# StopIteration and resets its traceback before raising it, so an await allocates nothing. `send` lets
# asyncio.create_task / wait_for / gather take them like coroutines; an exception thrown into the
# awaiting task (a cancel) is raised in it by MicroPython itself where no `throw` is defined.

def _park(ev):
    """Suspend the running task until `ev.set()`: what asyncio.Event.wait does, without the generator
    that call allocates. The caller's __next__ then returns None."""
    t = _core.cur_task
    ev.waiting.push(t)
    t.data = ev.waiting  # so that cancelling the task takes it off the queue


class _Aw:
    """An awaitable that ends at once with `value`; the base of the others, which override __next__
    and end the same way. _TRUE and _FALSE are what publish returns when the message went out, or
    was queued, at once."""

    def __init__(self, value=None):
        self._stop = StopIteration(value)

    def __iter__(self):
        return self

    def __next__(self):
        self._stop.__traceback__ = None
        raise self._stop

    def send(self, _):
        return self.__next__()


_TRUE = _Aw(True)
_FALSE = _Aw(False)


class _Reader(_Aw):
    """Awaitable reads of the link's socket: `await r.read(m)` fills the receive buffer's first m bytes,
    `await r.read(m, True)` reads m bytes into a new bytes object, left in r.got. Bytes the socket holds
    are taken without waiting; otherwise the task waits on asyncio's poller, as Stream.readinto does
    (whose coroutine allocates a frame per call). One per client; the reader task and the connect use
    it, never at the same time."""

    def __init__(self, buf):
        super().__init__()
        self.s = None  # the socket of the current link (MicroPython's Stream.s)
        self.buf = buf
        self.mv = memoryview(buf)
        self.m = self.i = 0
        self.got = None
        self._bytes = False

    def read(self, m, as_bytes=False):
        self.m = m
        self.i = 0
        self.got = None
        self._bytes = as_bytes
        return self

    def __next__(self):
        s = self.s
        if self._bytes:
            got = self.got
            part = s.read(self.m - len(got) if got else self.m)
            if part is not None:
                if not part:
                    raise EOFError("closed by the broker")
                self.got = got = part if got is None else got + part  # joined only when TCP split it
            done = got is not None and len(got) == self.m
        else:
            i = self.i
            if i < self.m:
                # A view only when a packet arrived split (allocates): mostly it is read whole, at 0.
                k = s.readinto(self.buf, self.m) if not i else s.readinto(self.mv[i:self.m])
                if k is not None:  # None: nothing there yet (or a TLS record not complete)
                    if not k:
                        raise EOFError("closed by the broker")
                    self.i = i = i + k
            done = i >= self.m
        if done:
            _Aw.__next__(self)
        _core._io_queue.queue_read(s)
        return None


class _Next(_Aw):
    """What `async for` on the client awaits for each message: the next one from the inbox, or the
    task waits until one arrives (or close()). The item is one list, [topic, msg, retained], refilled
    for every message: unpack it (`async for topic, msg, retained in client`), do not keep it."""

    def __init__(self, c):
        self.c = c
        self.item = [None, None, False]
        super().__init__(self.item)

    def __next__(self):
        c = self.c
        if c._in_n:
            c._take(self.item)
            _Aw.__next__(self)
        if c._closed:
            raise StopAsyncIteration
        _park(c._rxev)
        return None


class _Out(_Aw):
    """One packet on its way: a PUBLISH, or a SUBSCRIBE/UNSUBSCRIBE (its bytes in `msg`). Awaiting it
    waits for the writer if another packet is still draining, writes the packet, and (QoS 1) waits
    for its ack, resending with DUP when the ticker says it is overdue; it ends True when sent (QoS 1:
    acknowledged), False when the link dropped (a PUBLISH with `requeue` then goes back to the head of
    the offline queue, keeping its packet id). Records come from the client's pool and go back to it."""

    def __init__(self, c):
        self.c = c
        self.ev = asyncio.Event()  # set by the reader (ack), the ticker (overdue) and a dropping link
        self.nxt = None  # the pool's link
        self.pooled = False
        self.deadline = None  # while armed: when the ack is overdue; the reader takes acks only then
        self.result = None  # the ack's return code

    def start(self, kind, topic, msg, retain, qos, pid, dup, requeue):
        self.kind = kind
        self.topic = topic
        self.msg = msg
        self.retain = retain
        self.qos = qos
        self.pid = pid
        self.dup = dup
        self.requeue = requeue
        self.gen = self.c._gen
        self.tries = 0
        self.sent = self.overdue = False
        self.deadline = self.result = None
        return self

    def __next__(self):
        c = self.c
        while True:
            if self.result is not None:
                self._end(True)
            if self.gen != c._gen or not c._up:
                self._end(False)
            if not self.sent:
                if c._wbusy:  # the socket still drains another packet
                    _park(c._wfree)
                    return None
                if self.kind == _PUBLISH:
                    ok = c._put_publish(self.gen, self.topic, self.msg, self.qos, self.retain, self.dup, self.pid)
                else:
                    ok = c._write(self.gen, self.msg, len(self.msg))
                if not ok:
                    continue  # the link dropped
                if not self.qos:
                    self.result = 0
                    continue
                self.sent = True
                self.overdue = False
                self.deadline = ticks_add(ticks_ms(), c._ack_ms)
            if not self.overdue:
                _park(self.ev)
                return None
            if self.kind != _PUBLISH:
                c._drop(self.gen, "no answer to %s %s" % (
                    "SUBSCRIBE" if self.kind == _SUBSCRIBE else "UNSUBSCRIBE", self.topic))
                self._end(False)
            self.tries += 1
            if self.tries > _RETRIES:
                c._drop(self.gen, "no PUBACK for packet %d after %d tries" % (self.pid, self.tries))
                self._end(False)
            c._log("warning", "no PUBACK for packet %d on %s; resending" % (self.pid, self.topic.decode()))
            self.dup = 1
            self.sent = False

    def _end(self, ok):
        c = self.c
        self.deadline = None
        if ok:
            if self.kind == _PUBLISH:
                c.tx += 1
            c._release(self)
            _Aw.__next__(_TRUE)
        if self.kind == _PUBLISH and self.requeue and not c._closing:
            entry = (self.topic, self.msg, self.retain, self.qos, self.pid)
            if not c._q.push_front(entry):
                c._lost(entry)
            elif self.pid:  # the record stays in _pending, reserving the id until the message is resent
                _Aw.__next__(_FALSE)
        c._release(self)
        _Aw.__next__(_FALSE)

    def throw(self, e, *_):
        # The awaiting task was cancelled: the packet is abandoned, its id freed.
        self.deadline = None
        self.c._release(self)
        raise e


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
        self._rx = _Reader(self._rbuf)
        self._obuf = bytearray(_OBUF)
        self._abuf = bytearray(b"\x40\x02\x00\x00")  # PUBACK
        self._q = _Ring([None] * max(1, queue_len))  # outgoing while offline: (topic bytes, msg, retain, qos, pid)
        # Incoming, for `async for`, in parallel preallocated lists (a tuple per message would allocate):
        # topic, payload, and packet id << 2 | QoS 1 << 1 | retained. A QoS 1 message is acknowledged
        # only when the consumer takes it, so the broker's in-flight window holds back a flood and no
        # accepted QoS 1 message is ever dropped here; QoS 0 beyond queue_len is dropped on arrival.
        size = max(queue_len, _RX1_MAX)
        self._in_t = [None] * size
        self._in_m = [None] * size
        self._in_f = array("I", bytes(4 * size))
        self._in_h = 0  # head
        self._in_n = 0  # count
        self._rx0 = 0  # QoS 0 messages in the inbox
        self._rx0_max = queue_len
        self._next = _Next(self)
        self._seen = [0] * _SEEN  # keys (packet id + hash) of the last QoS 1 messages received (a list: `in`)
        self._seen_i = 0
        self._rxev = asyncio.Event()  # a message arrived (or close())
        self._ready = asyncio.Event()  # connected, subscriptions restored, queue flushed
        self._down = asyncio.Event()  # the current link is gone
        # The link number while the socket drains a packet it took only in part; nobody else writes then.
        self._wbusy = 0
        self._wfree = asyncio.Event()  # set when that drain is done
        self._acks = _Ring(array("H", bytes(2 * (_RX1_MAX + 8))))  # PUBACKs that wait for that drain
        self._free = None  # the pool of _Out records (a linked list: no allocation to take or return one)
        self._subs = {}  # filter -> qos: what we want
        self._confirmed = set()  # filters the broker acknowledged in the session it holds for us
        self._unsub_todo = set()  # unsubscribed while offline, still in the broker's session
        self._pending = {}  # packet id -> _Out: awaited acks, ids of requeued messages
        self._pid = 0
        self._gen = 0  # counts connections, so a stale task cannot drop a newer link
        self._up = False
        self._flushing = False
        self._closing = False
        self._closed = False
        self._w = None
        self._task = self._rtask = self._ptask = self._dtask = None  # keeper, reader, ticker, drain
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
            # The "mqtt-keeper" task: started here, once; connects, reconnects and restores the
            # session until close() cancels it.
            self._task = asyncio.create_task(self._keep())
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

    def publish(self, topic, msg, retain=False, qos=0):
        """Send now (QoS 1: until PUBACK) or queue while offline; await the result: True when sent,
        False when queued. A QoS 0 message the socket takes at once is written before this returns,
        and the await neither allocates nor yields (as CPython's StreamWriter.write does not)."""
        if qos == 2:
            self._log("error", "QoS 2 is not supported: message on %s not sent" % topic)
            return _FALSE
        if isinstance(topic, str):
            topic = topic.encode()  # shares the str's data: a 32-byte header (x64); bytes cost nothing
        if not topic or b"+" in topic or b"#" in topic:
            raise ValueError("invalid topic name %r" % topic)
        if isinstance(msg, str):
            msg = msg.encode()
        retain = 1 if retain else 0
        qos = 1 if qos else 0
        if not self._up or self._flushing or self._q.n:
            self._enqueue((topic, msg, retain, qos, 0))
            return _FALSE
        if not qos and not self._wbusy and self._put_publish(self._gen, topic, msg, 0, retain, 0, 0):
            self.tx += 1
            return _TRUE
        return self._publish_now(topic, msg, retain, qos, 0, True)

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
            return await self._request(_SUBSCRIBE, topic, qos)
        return False

    async def unsubscribe(self, topic):
        if isinstance(topic, bytes):
            topic = topic.decode()
        self._subs.pop(topic, None)
        self._confirmed.discard(topic)
        self._unsub_todo.add(topic)  # until the broker acknowledges it
        if self._up:
            return await self._request(_UNSUBSCRIBE, topic, 0)
        return False

    def __aiter__(self):
        return self

    def __anext__(self):
        return self._next

    async def close(self):
        """Say `offline` (with a will), disconnect cleanly and stop every task of the client."""
        self._closing = True
        gen = self._gen
        if self._up:
            if self._will:
                await self._publish_now(self._will[0], b"offline", 1, 1, 0, False)
            await self._wait_writer()
            if self._write(gen, _DISCONNECT, 2):
                await self._wait_writer()
        self._up = False
        if self._q.n:
            self._log("warning", "closed with %d messages still queued" % self._q.n)
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._teardown()  # cancels the link's own tasks
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
        self._rtask = asyncio.create_task(self._read_loop(gen))
        # The "mqtt-ticker" task: started here after each CONNACK; ends when this link drops.
        self._ptask = asyncio.create_task(self._tick_loop(gen))
        if await self._resume(gen, session):
            self._ready.set()
            if self._on_connect:
                # The "mqtt-on-connect" task: started after each (re)connect; ends when the
                # callback returns. A task, so a slow callback never delays noticing a dead link.
                asyncio.create_task(self._run_on_connect())
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
            from pysmartnode.mqtt_tls import context  # only TLS nodes hold its code
            kw["ssl"] = context(self._tls, None if self._ever else self._log)
            kw["server_hostname"] = self._tls.get("server_hostname") or self.server
        r, w = await asyncio.wait_for(asyncio.open_connection(self.server, self.port, **kw), self._conn_s)
        _nodelay(w)
        try:
            w.write(connect_packet(self.client_id, self._keepalive, self._clean, self._will,
                                   self._user, self._password))
            await w.drain()
            self._rx.s = w.s  # the non-blocking socket (or TLS socket) under the stream
            b = self._rbuf
            await asyncio.wait_for(self._rx.read(4), self._conn_s)
            if b[0] != _CONNACK or b[1] != 2:
                raise ValueError("expected CONNACK, got packet type 0x%02x" % b[0])
            if b[3]:
                rc = b[3]
                raise OSError("broker refused: %s" % (_REFUSED[rc] if rc < len(_REFUSED) else rc))
        except BaseException:
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
                if not await self._request(_UNSUBSCRIBE, f, 0):
                    return False
            for f, qos in list(self._subs.items()):
                if f not in self._confirmed and not await self._request(_SUBSCRIBE, f, qos):
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
        p = self._pending
        for pid in p:
            p[pid].ev.set()
        self._down.set()

    def _teardown(self):
        # Before the socket closes: a task still waiting on it would keep asyncio's poller busy.
        for t in (self._rtask, self._ptask, self._dtask):
            if t is not None:
                t.cancel()
        self._rtask = self._ptask = self._dtask = None
        w, self._w = self._w, None
        if w is not None:
            _close(w)
        self._wbusy = 0
        self._acks.clear()
        self._wfree.set()
        # QoS 1 messages still in the inbox came on this link and can be acknowledged on no other: the
        # broker resends them on the next, where that copy is acknowledged (and not delivered twice).
        f = self._in_f
        for j in range(len(f)):
            f[j] &= 3

    # --- sending --------------------------------------------------------------------------------

    def _enqueue(self, entry):
        old = self._q.push(entry)
        if old is not None:
            self._lost(old)

    def _lost(self, entry):
        """A queued message dropped: counted, and the packet id it held freed."""
        self.dropped += 1
        self._qdrops += 1
        out = self._pending.get(entry[4]) if entry[4] else None
        if out is not None:
            self._release(out)

    def _newpid(self):
        pid = self._pid
        while True:
            pid = pid % 65535 + 1
            if pid not in self._pending:  # ids of unacknowledged and requeued messages stay reserved
                self._pid = pid
                return pid

    def _out(self):
        out = self._free
        if out is None:
            return _Out(self)
        self._free = out.nxt
        out.pooled = False
        return out

    def _release(self, out):
        """Done with `out` for good: its packet id (if it still holds one) is freed, the record pooled."""
        if out.pid and self._pending.get(out.pid) is out:
            del self._pending[out.pid]
        if not out.pooled:
            out.pooled = True
            out.topic = out.msg = None
            out.nxt = self._free
            self._free = out

    async def _wait_writer(self):
        while self._wbusy:
            self._wfree.clear()
            await self._wfree.wait()

    def _write(self, gen, buf, n):
        """Hand buf[:n] to link `gen` now (MicroPython's Stream.write, minus the view it would need
        of buf[:n]). False when the link is gone. Only while the writer is free, or right after a
        write of the same packet: what the socket does not take waits in the stream's buffer, and
        the drain task writes it out holding the writer."""
        w = self._w
        if gen != self._gen or not self._up or w is None:
            return False
        try:
            if w.out_buf:  # an earlier part of this packet waits: this part goes after it
                w.out_buf += memoryview(buf)[:n]
            else:
                k = self._rx.s.write(buf, n)
                if k != n:  # the socket's send buffer is full (None: a TLS record must be retried whole)
                    w.out_buf = bytes(memoryview(buf)[k or 0:n])
                    self._wbusy = gen
                    # The "mqtt-drain" task: started here when the socket took only part of a packet;
                    # ends once the rest is written (or the link drops), freeing the writer.
                    self._dtask = asyncio.create_task(self._drain(gen))
        except Exception as e:  # OSError
            self._drop(gen, "write failed: %s" % _why(e))
            return False
        self._last_tx = ticks_ms()
        return True

    async def _drain(self, gen):
        try:
            # With a timeout: a dead link may never drain, and MicroPython does not wake a task
            # waiting on a socket that another task stopped waiting on.
            await asyncio.wait_for(self._w.drain(), self._ack_ms / 1000)
        except Exception as e:  # OSError, the timeout, or a link torn down meanwhile
            self._drop(gen, "write failed: %s" % _why(e))
        if self._wbusy != gen:
            return  # torn down meanwhile: the writer is free already
        self._wbusy = 0
        self._dtask = None
        while self._acks.n and not self._wbusy:  # the PUBACKs that waited, in order
            self._ack(gen, self._acks.pop())
        if not self._wbusy:
            self._wfree.set()

    def _ack(self, gen, pid):
        """PUBACK `pid` on link `gen`: now, or after the packet that is draining (acks keep their order)."""
        if gen != self._gen:
            return  # the broker resends it on the new link, and that copy is acknowledged
        if self._wbusy:
            self._acks.push(pid)
            return
        a = self._abuf
        a[2] = pid >> 8
        a[3] = pid & 0xFF
        self._write(gen, a, 4)

    def _put_publish(self, gen, topic, msg, qos, retain, dup, pid):
        """Write one PUBLISH on link `gen`, the writer being free; False when the link is gone."""
        o = self._obuf
        tl = len(topic)
        ml = len(msg)
        o[0] = _PUBLISH | dup << 3 | qos << 1 | retain
        i = put_length(o, 1, 2 + tl + (2 if qos else 0) + ml)
        o[i] = tl >> 8
        o[i + 1] = tl & 0xFF
        end = i + 2 + tl + (2 if qos else 0)
        if end > _OBUF:  # a very long topic: written piece by piece
            if not self._write(gen, o, i + 2) or not self._write(gen, topic, tl):
                return False
            if qos:
                o[0] = pid >> 8
                o[1] = pid & 0xFF
                if not self._write(gen, o, 2):
                    return False
            return self._write(gen, msg, ml)
        o[i + 2:i + 2 + tl] = topic
        if qos:
            o[end - 2] = pid >> 8
            o[end - 1] = pid & 0xFF
        if end + ml <= _OBUF:  # the whole packet in one write
            o[end:end + ml] = msg
            return self._write(gen, o, end + ml)
        return self._write(gen, o, end) and self._write(gen, msg, ml)

    def _publish_now(self, topic, msg, retain, qos, pid, requeue):
        """An _Out for one message (see there). A requeued message keeps its packet id and record."""
        out = None
        dup = 0
        if qos:
            if pid:
                dup = 1  # it may have gone out before the link dropped
                out = self._pending.get(pid)
            else:
                pid = self._newpid()
        if out is None:
            out = self._out()
        out.start(_PUBLISH, topic, msg, retain, qos, pid, dup, requeue)
        if qos:
            self._pending[pid] = out
        return out

    async def _request(self, kind, topic_filter, qos):
        """SUBSCRIBE or UNSUBSCRIBE one filter and wait for its ack. False on refusal or link loss."""
        pid = self._newpid()
        pkt = subscribe_packet(pid, topic_filter, qos) if kind == _SUBSCRIBE else unsubscribe_packet(pid, topic_filter)
        out = self._pending[pid] = self._out().start(kind, topic_filter, pkt, 0, 1, pid, 0, False)
        if not await out:
            return False
        code = out.result  # read before anything can take the record from the pool again
        if kind == _UNSUBSCRIBE:
            self._unsub_todo.discard(topic_filter)
            return True
        if code == 0x80:
            self._log("error", "the broker refused the subscription to %s" % topic_filter)
            self._subs.pop(topic_filter, None)
            return False
        if topic_filter in self._subs:
            self._confirmed.add(topic_filter)
        return True

    # --- receiving ------------------------------------------------------------------------------

    async def _tick_loop(self, gen):
        # Marks overdue acks (cheaper than asyncio.wait_for per QoS 1 message) and keeps the link
        # alive: pings go out after keepalive/2 without traffic, and a broker silent for a whole
        # keepalive is a dead link. Checked every <= keepalive/4, so a dead link is found at most
        # 1.25 x keepalive after the broker's last byte.
        k = self._keepalive * 1000
        half = k // 2
        step = min(max(self._ack_ms // 4, 100), max(k // 4, 100) if k else 5000, 5000)
        p = self._pending
        while gen == self._gen and self._up:
            await _sleep_ms(step)
            now = ticks_ms()
            for pid in p:
                out = p[pid]
                if out.deadline is not None and ticks_diff(now, out.deadline) >= 0:
                    out.deadline = None
                    out.overdue = True
                    out.ev.set()
            if not k:
                continue
            idle = ticks_diff(now, self._last_rx)
            if idle > k:
                self._drop(gen, "no answer from the broker for %d ms: dead link" % idle)
                return
            if ticks_diff(now, self._last_ping) >= half and not self._wbusy and (
                    idle >= half or ticks_diff(now, self._last_tx) >= half):
                self._last_ping = now
                self._write(gen, _PINGREQ, 2)

    async def _read_loop(self, gen):
        # One loop for every packet, reading through the _Reader (a coroutine per packet would
        # allocate a frame per packet): a message costs its topic and payload, nothing more.
        b = self._rbuf
        rx = self._rx
        try:
            while gen == self._gen:
                await rx.read(2)
                kind = b[0]
                d = b[1]
                n = d & 0x7F
                shift = 7
                while d & 0x80:
                    if shift > 21:
                        raise ValueError("remaining length longer than 4 bytes")
                    await rx.read(1)
                    d = b[0]
                    n += (d & 0x7F) << shift
                    shift += 7
                self._last_rx = ticks_ms()
                if kind & 0xF0 == _PUBLISH:
                    qos = kind >> 1 & 3
                    if qos == 3:
                        raise ValueError("PUBLISH with QoS 3")
                    if n < 3:
                        raise ValueError("PUBLISH of %d bytes" % n)
                    if n > self._max:
                        await self._skip(gen, qos, n)
                        continue
                    pl = 2 if qos else 0
                    await rx.read(2)
                    tl = b[0] << 8 | b[1]
                    if not tl or 2 + tl + pl > n:
                        raise ValueError("PUBLISH topic of %d bytes in a packet of %d" % (tl, n))
                    await rx.read(tl, True)
                    topic = str(rx.got, "utf-8")  # shares the bytes' data: no copy
                    pid = 0
                    if qos:
                        await rx.read(2)
                        pid = b[0] << 8 | b[1]
                    msg = b""
                    if n > 2 + tl + pl:
                        await rx.read(n - 2 - tl - pl, True)
                        msg = rx.got
                    rx.got = None
                    if "+" in topic or "#" in topic:
                        raise ValueError("PUBLISH to a wildcard topic %s" % topic)
                    if qos == 2:
                        self.skipped += 1
                        self._log("error", "refused a QoS 2 message on %s: QoS 2 is not supported" % topic)
                        continue
                    if qos and not await self._admit(gen, kind, topic, msg, pid):
                        continue
                    if not self._deliver(topic, msg, kind & 1, pid) and qos:
                        self._ack(gen, pid)  # not for us: acknowledge and forget
                    # Let the consumer (and every other task) run before the next message: the socket
                    # may hold many, and reading them all at once would overflow the incoming queue.
                    await _sleep_ms(0)
                    continue
                if n > _RBUF:
                    raise ValueError("packet type 0x%02x of %d bytes" % (kind, n))
                if n:
                    await rx.read(n)
                if kind == _PUBACK or kind == _UNSUBACK or kind == _SUBACK:
                    if n != 2 and not (kind == _SUBACK and n == 3):
                        raise ValueError("ack type 0x%02x of %d bytes" % (kind, n))
                    pid = b[0] << 8 | b[1]
                    out = self._pending.get(pid)
                    if out is not None and out.deadline is not None:  # armed: somebody waits for it
                        out.result = b[2] if kind == _SUBACK else 0
                        out.deadline = None
                        del self._pending[pid]
                        out.ev.set()
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

    def _admit(self, gen, kind, topic, msg, pid):
        """Awaitable: False when a QoS 1 message is a redelivery of one already taken, or is left
        unacknowledged to the broker (which resends it on reconnect) because the consumer lags."""
        # A broker resends (DUP) a message whose PUBACK it never got, though we took it: a TOGGLE
        # would toggle twice. A small int key: packet id and a 14-bit hash of the message.
        key = pid | ((hash(topic) ^ hash(msg)) & 0x3FFF) << 16
        if kind & 8 and key in self._seen:
            self._ack(gen, pid)
            self.redelivered += 1
            self._log("info", "dropped a redelivery of packet %d on %s: already handled" % (pid, topic))
            return _FALSE
        if self._held():
            return self._backpressure(gen, key, topic, pid)
        self._remember(key)
        return _TRUE

    def _remember(self, key):
        # Only once the message is taken in: one left to the broker must count as new when it comes again.
        self._seen[self._seen_i] = key
        self._seen_i = (self._seen_i + 1) % _SEEN

    async def _backpressure(self, gen, key, topic, pid):
        """False when the QoS 1 message is left unacknowledged to the broker (it resends it on reconnect).
        Stops reading while the consumer catches up (Mosquitto 2.0 does not keep to its in-flight
        window), but not while a publish awaits its PUBACK, which sits behind this message in the
        stream: that would deadlock the link. Then holds more, up to _RX1_MAX."""
        t = ticks_ms()
        while self._held() and gen == self._gen and not self._awaiting_ack() and ticks_diff(ticks_ms(), t) < _RX1_WAIT:
            await _sleep_ms(5)
        if self._in_n - self._rx0 >= _RX1_MAX or self._in_n == len(self._in_t):
            self.rx_dropped += 1
            self._log("error", "held %d unacknowledged messages: left packet %d on %s to the broker"
                      % (_RX1_MAX, pid, topic))
            return False
        self._remember(key)
        return True

    async def _skip(self, gen, qos, n):
        """Read an oversized PUBLISH in small chunks and forget it; acknowledge it so it is not resent."""
        b = self._rbuf
        rx = self._rx
        topic = "?"
        pid = 0
        left = n - 2
        await rx.read(2)
        tl = b[0] << 8 | b[1]
        if tl and tl + (2 if qos else 0) <= left:
            await rx.read(tl, True)
            left -= tl
            try:
                topic = str(rx.got, "utf-8")
            except ValueError:
                pass
            rx.got = None
            if qos:
                await rx.read(2)
                pid = b[0] << 8 | b[1]
                left -= 2
        while left:
            k = min(left, _RBUF)
            await rx.read(k)
            left -= k
        self.skipped += 1
        self._log("warning", "skipped a %d-byte message on %s: larger than max_packet %d" % (n, topic, self._max))
        if qos == 1:
            self._ack(gen, pid)

    def _held(self):
        """True when the consumer lags: _RX1 QoS 1 messages wait, or the inbox is full."""
        return self._in_n - self._rx0 >= _RX1 or self._in_n == len(self._in_t)

    def _awaiting_ack(self):
        p = self._pending
        for pid in p:
            if p[pid].deadline is not None:  # armed: somebody waits for this ack
                return True
        return False

    def _deliver(self, topic, msg, retained, pid):
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
            if self._rx0 >= self._rx0_max or self._in_n == len(self._in_t):
                self.rx_dropped += 1
                self._log("warning", "incoming queue full: dropped a QoS 0 message on %s" % topic)
                return False
            self._rx0 += 1
        self.rx += 1
        size = len(self._in_t)
        j = (self._in_h + self._in_n) % size
        self._in_t[j] = topic
        self._in_m[j] = msg
        self._in_f[j] = pid << 2 | (2 if pid else 0) | retained
        self._in_n += 1
        self._rxev.set()
        return True

    def _take(self, item):
        """Move the oldest message of the inbox into `item`; a QoS 1 one is acknowledged now."""
        j = self._in_h
        item[0] = self._in_t[j]
        item[1] = self._in_m[j]
        f = self._in_f[j]
        item[2] = bool(f & 1)
        self._in_t[j] = self._in_m[j] = None
        self._in_h = (j + 1) % len(self._in_t)
        self._in_n -= 1
        if not f & 2:
            self._rx0 -= 1
        elif f >> 2:
            self._ack(self._gen, f >> 2)

    def _log(self, level, msg):
        try:
            self._logf(level, msg)
        except Exception as e:  # a broken logger must not take the link down
            print("mqtt log failed:", e, msg)


def _nodelay(w):
    # Nagle's algorithm would hold a small packet back until the broker ACKs the one before (~40 ms with
    # delayed ACKs: a /set -> state round trip took 44 ms). CPython's asyncio turns it off; MicroPython's
    # streams do not.
    try:
        w.s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    except Exception:  # a TLS wrapper or a port without the option: Nagle stays on
        pass


def _close(w):
    # The socket itself: MicroPython's Stream.close() does nothing, and a dropped link's socket
    # would stay open, holding the broker's side of it and one of the few sockets a board has.
    try:
        w.s.close()
    except Exception:  # the socket may be dead already
        pass
