"""`fleet firmware flash`: erase a board and write a MicroPython image (stock or frozen) with esptool.

Before anything reaches the board the image is checked: the file exists, starts with the ESP image magic
byte 0xE9, parses as an image of the chip with esptool's own reader, has its segments where that chip has
memory, and (ESP32) carries the ESP32's chip id. `--dry-run` prints the esptool commands instead.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from firmware.bundle import FirmwareError

MAGIC = 0xE9  # the first byte of every ESP8266/ESP32 firmware image


@dataclass(frozen=True)
class Chip:
    name: str
    offset: int  # where MicroPython's image goes
    write_options: tuple[str, ...]


CHIPS = {
    # ESP32: bootloader, partition table and app in one file, written at 0x1000 (docs.micropython.org)
    "esp32": Chip("esp32", 0x1000, ("-z",)),
    # ESP8266: the image at 0; the flash size is read from the board
    "esp8266": Chip("esp8266", 0x0, ("--flash-size", "detect")),
}


def check_image(image: Path, chip: str) -> str:
    """A one-line description of a valid image; FirmwareError says what is wrong with any other file."""
    from esptool.bin_image import LoadFirmwareImage
    from esptool.targets import CHIP_DEFS

    image = Path(image)
    if not image.is_file():
        raise FirmwareError(f"image {image}: no such file")
    data = image.read_bytes()
    if len(data) < 24:
        raise FirmwareError(f"image {image}: {len(data)} bytes, too short for a firmware image")
    if data[0] != MAGIC:
        raise FirmwareError(f"image {image}: not an ESP firmware image (first byte 0x{data[0]:02X}, an image "
                            f"starts with 0x{MAGIC:02X})")
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # we say why
            img = LoadFirmwareImage(chip, data)
    except Exception as e:
        raise FirmwareError(f"image {image}: not a valid {chip} image ({e})") from None
    rom = CHIP_DEFS[chip]
    want = getattr(rom, "IMAGE_CHIP_ID", None)
    got = getattr(img, "chip_id", None)
    if want is not None and got != want:
        other = next((n for n, c in CHIP_DEFS.items() if getattr(c, "IMAGE_CHIP_ID", None) == got),
                     f"another chip (chip id {got})")
        raise FirmwareError(f"image {image}: made for {other}, not {chip}")
    regions = [(start, end) for start, end, _ in rom.MEMORY_MAP]
    for seg in img.segments:
        if not any(start <= seg.addr < end for start, end in regions):
            raise FirmwareError(f"image {image}: a segment loads at 0x{seg.addr:08X}, where {chip} has no memory: "
                                "an image for another chip?")
    return f"{image.name}: {chip} image, {len(data):,} bytes, {len(img.segments)} segments"


def commands(port: str, image: Path, chip: str, baud: int = 460800, offset: int | None = None,
             erase: bool = True) -> list[list[str]]:
    """The esptool command lines (without the program name) that erase and write the board."""
    c = CHIPS[chip]
    base = ["--chip", chip, "--port", port]
    cmds = [[*base, "erase-flash"]] if erase else []
    at = c.offset if offset is None else offset
    cmds.append([*base, "--baud", str(baud), "write-flash", *c.write_options, f"0x{at:x}", str(image)])
    return cmds


def flash(port: str, image: Path, chip: str, *, baud: int = 460800, offset: int | None = None, erase: bool = True,
          dry_run: bool = False) -> list[str]:
    """Check the image, then run (or with `dry_run` only list) the esptool commands; returns them as text."""
    if chip not in CHIPS:
        raise FirmwareError(f"--chip {chip}: one of {', '.join(CHIPS)}")
    print(check_image(image, chip))
    cmds = commands(port, image, chip, baud, offset, erase)
    shown = [shlex.join(["esptool", *c]) for c in cmds]
    if dry_run:
        return shown
    if not Path(port).exists():
        raise FirmwareError(f"--port {port}: no such device (is the board plugged in?)")
    for line, args in zip(shown, cmds, strict=True):
        print(f"$ {line}", flush=True)
        # esptool draws its own progress on this terminal
        if subprocess.run([sys.executable, "-m", "esptool", *args], check=False).returncode != 0:
            raise FirmwareError(f"esptool failed: {line}")
    return shown
