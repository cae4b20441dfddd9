"""`fleet firmware`: placeholder until issue 11 fills it in."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=lambda args: print("fleet firmware: not built yet (issue 11)") or 2)
