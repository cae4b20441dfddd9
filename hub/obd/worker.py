"""The adapter's own process: `python -m hub.obd.worker '<LinkSettings as JSON>'`, run by the OBD job.

python-OBD spends most of its time in Python (pyserial hands it a socket byte by byte), so in the hub's
process it would fight the event loop for the GIL and slow every answer down (bench/hub_obd.py measured
0.65 of obd.Async's rate that way). In a process of its own it polls at full speed, and a wedged driver
can be killed without taking the hub along.

Requests arrive on stdin, one JSON object a line:
  {"op": "watch", "command": "RPM", "rate": 2.0}   {"op": "unwatch", "command": "RPM"}   {"op": "unwatch_all"}
  {"op": "pause", "paused": true}                   {"op": "query", "id": 7, "command": "GET_DTC"}
Reports go to stdout, one a line, `<kind> <data>`:
  value <COMMAND> <payload JSON, ready to publish>    state <"connected" | "no car" | "disconnected">
  supported <JSON list of names>                      reply <{"id", "ok", "result" | "error"}>
The worker ends when stdin closes (the job ended or died).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import sys
import threading
from typing import Any, BinaryIO

import obd

from hub.obd import encode
from hub.obd.link import Link, LinkSettings


class Reporter:
    """Writes reports to stdout from the link thread and the main thread, a whole line at a time."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.lock = threading.Lock()

    def send(self, kind: str, data: str) -> None:
        line = f"{kind} {data}\n".encode()
        with self.lock:
            self.out.write(line)
            self.out.flush()

    def from_link(self, kind: str, data: Any) -> None:
        if kind == "value":
            self.send("value", f"{data.command.name} {_json(encode.response(data))}")
        elif kind == "supported":
            self.send("supported", _json(sorted(data)))
        elif kind == "state":
            self.send("state", _json(data))
        else:  # "failed": the link thread died; the job sees the worker end and restarts
            self.send("failed", _json(str(data)))
            self.out.close()


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def serve(settings: LinkSettings, requests: BinaryIO, reporter: Reporter) -> None:
    link = Link(settings, reporter.from_link)
    link.start()
    try:
        for line in requests:
            request = json.loads(line)
            op = request["op"]
            cmd = encode.find_command(request.get("command"))
            if op == "watch" and cmd is not None:
                link.watch(cmd, float(request["rate"]))
            elif op == "unwatch" and cmd is not None:
                link.unwatch(cmd.name)
            elif op == "unwatch_all":
                link.unwatch_all()
            elif op == "pause":
                link.pause(bool(request["paused"]))
            elif op == "query" and cmd is not None:
                future = link.call(lambda conn, cmd=cmd: conn.query(cmd, force=True))
                future.add_done_callback(lambda f, rid=request["id"]: _reply(reporter, rid, f))
    finally:
        link.close()


def _reply(reporter: Reporter, rid: int, future: concurrent.futures.Future[Any]) -> None:
    exc = future.exception()
    if exc is not None:
        reply = {"id": rid, "ok": False, "error": str(exc), "link": isinstance(exc, ConnectionError)}
    elif not future.result().messages:  # (an answer may decode to null: CLEAR_DTC's does)
        reply = {"id": rid, "ok": False, "error": "no answer"}
    else:
        reply = {"id": rid, "ok": True, "result": encode.response(future.result())}
    reporter.send("reply", _json(reply))


def main() -> None:
    settings = LinkSettings(**json.loads(sys.argv[1]))
    # Our lines and python-OBD's go to stderr as `LEVEL name: message`; the job logs them as its own.
    obd.logger.removeHandler(obd.console_handler)
    obd.logger.setLevel(logging.ERROR)  # it warns on every empty read, which backoff already reports
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve(settings, sys.stdin.buffer, Reporter(sys.stdout.buffer))


if __name__ == "__main__":
    main()
