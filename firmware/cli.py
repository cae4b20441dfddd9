"""`fleet firmware bundle|deploy|flash`: node firmware for boards and virtual devices (docs/FIRMWARE.md)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from firmware.bundle import TARGETS, Bundle, FirmwareError, make_bundle


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=Path, help="the device registry folder (with --device)")
    p.add_argument("--device", help="bundle for this device: only the components its config uses, and its "
                   "config.py and components.d/ from the registry")
    p.add_argument("--components", nargs="+", metavar="MODULE",
                   help="only these component modules (.sensors.bme280 or sensors.bme280) and what they import")
    p.add_argument("--target", choices=sorted(TARGETS),
                   help="the board: esp32, esp8266, or unix for a virtual device (default: the device "
                   "file's platform, else esp32)")
    p.add_argument("--micropython", metavar="VERSION",
                   help="the MicroPython version on the board, for its .mpy format (default: the newest, 1.23+)")
    p.add_argument("--credentials", type=Path, metavar="DIR",
                   help="with --device: the folder of credentials.json (`fleet broker credentials`): the "
                   "device's own MQTT password and config key go into its config.py")
    p.add_argument("--ca", type=Path, metavar="FILE",
                   help="with --device: the CA certificate (from `fleet broker tls-init`) the node verifies an "
                   "mqtts:// broker against; bundled as ca.crt")
    p.add_argument("--frozen", action="store_true",
                   help="the board runs an image with the code frozen in: bundle only boot.py, main.py, config.py")


def _make(args: argparse.Namespace, out: Path) -> Bundle:
    if args.device and args.components:
        raise FirmwareError("--device or --components, not both")
    target = args.target
    if target is None:
        target = "esp32"
        if args.device and args.devices:
            from config_server.declarations import Library
            from firmware.bundle import read_config
            cfg, _ = read_config(args.devices, args.device, Library())
            target = cfg.platform or "esp32"
    return make_bundle(out, target, devices=args.devices, device=args.device, packages=args.components,
                       credentials=args.credentials, ca=args.ca, micropython=args.micropython, frozen=args.frozen)


def _bundle(args: argparse.Namespace) -> int:
    bundle = _make(args, args.out)
    print(bundle.report())
    print(f"deploy: fleet firmware deploy --port PORT --bundle {args.out}   "
          f"(or: mpremote mip install {args.out}/package.json, then mpremote cp the device files to :)")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from firmware.deploy import deploy

    with tempfile.TemporaryDirectory(prefix="fleet-bundle-") as tmp:
        folder = args.bundle
        if folder is None:
            folder = Path(tmp) / "bundle"
            bundle = _make(args, folder)
            print(f"bundle for {bundle.target.name}: {len(bundle.sizes)} files, {bundle.total:,} B")
        done = deploy(args.port, folder, force=args.force, restart=not args.no_restart, baud=args.baud)
    print(f"{args.port} ({done.platform}): copied {len(done.copied)} files ({done.bytes:,} B), "
          f"{len(done.unchanged)} unchanged, in {done.seconds:.1f} s"
          + ("" if args.no_restart else "; restarted"))
    return 0


def _flash(args: argparse.Namespace) -> int:
    from firmware.flash import flash

    lines = flash(args.port, args.image, args.chip, baud=args.baud, offset=args.offset, erase=not args.no_erase,
                  dry_run=args.dry_run)
    if args.dry_run:
        print("\n".join(lines))
    return 0


def _guard(fn):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except FirmwareError as e:
            print(f"fleet firmware: {e}", file=sys.stderr)
            return 2
    return run


def register(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    b = verbs.add_parser("bundle", help="compile the node code to .mpy into a folder for a board",
                         description="Compile pysmartnode and the components with mpy-cross into a folder laid "
                         "out like the board's filesystem, with a package.json for mpremote mip and a freeze "
                         "manifest. Prints the size of each file and the total.")
    _selection(b)
    b.add_argument("--out", type=Path, required=True, help="the bundle folder (replaced if it is a bundle)")
    b.set_defaults(func=_guard(_bundle))

    d = verbs.add_parser("deploy", help="copy a bundle to a board or virtual device with mpremote, then restart it",
                         description="Copy the files that differ (SHA-256 on the board) with mpremote, show a "
                         "progress bar, restart the board. A virtual device: `fleet node run … --pty` and its "
                         "pty path as --port.")
    d.add_argument("--port", required=True, help="serial port (/dev/ttyUSB0) or a virtual device's pty path")
    d.add_argument("--bundle", type=Path, help="a folder made by `fleet firmware bundle` (default: make one from "
                   "the options below)")
    _selection(d)
    d.add_argument("--force", action="store_true", help="copy every file, changed or not")
    d.add_argument("--no-restart", action="store_true", help="leave the board in its REPL")
    d.add_argument("--baud", type=int, default=115200)
    d.set_defaults(func=_guard(_deploy))

    f = verbs.add_parser("flash", help="erase a board and write a MicroPython image with esptool",
                         description="Check the image (an ESP image of that chip), then erase the flash and "
                         "write it with esptool. --dry-run prints the esptool commands.")
    f.add_argument("--port", required=True, help="serial port of the board")
    f.add_argument("--image", type=Path, required=True, help="a MicroPython .bin (stock, or built with "
                   "firmware/manifest.py)")
    f.add_argument("--chip", choices=["esp32", "esp8266"], default="esp32", help="default %(default)s")
    f.add_argument("--baud", type=int, default=460800, help="default %(default)s")
    f.add_argument("--offset", type=lambda s: int(s, 0), help="flash address (default: 0x1000 on esp32, 0 on "
                   "esp8266)")
    f.add_argument("--no-erase", action="store_true", help="write without erasing first (keeps the filesystem)")
    f.add_argument("--dry-run", action="store_true", help="check the image and print the esptool commands only")
    f.set_defaults(func=_guard(_flash))
