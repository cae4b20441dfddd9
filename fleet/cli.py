"""`fleet <area> <verb>`: the one way in. Each area's verbs live with its code and are registered here.

An area module has `register(parser)`, which adds its verbs with `set_defaults(func=handler)`;
a handler takes the parsed arguments and returns the exit code. Modules import their heavy
dependencies (PyAV, python-OBD, …) inside handlers, so `fleet --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fleet import __version__
from fleet.errors import BrokerError, ConfigError

AREAS: dict[str, tuple[str, str]] = {
    "broker": ("fleet.broker", "run a broker; make credentials, ACLs and TLS files"),
    "node": ("fleet.vnode", "run virtual nodes on the MicroPython unix port"),
    "server": ("config_server.cli", "the config server: validate, run, list devices, read logs"),
    "hub": ("hub.cli", "the car hub: run, watch traffic, bridge config, uploads"),
    "firmware": ("firmware.cli", "bundle, deploy and flash node firmware"),
    "sim": ("fleet.sim", "the whole fleet simulated on this machine"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description="SmartFleet: an MQTT fleet of small computers.")
    parser.add_argument("--version", action="version", version=f"SmartFleet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    areas = parser.add_subparsers(dest="area", required=True, metavar="AREA")
    for name, (module, help_text) in AREAS.items():
        sub = areas.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, BrokerError) as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
