"""`fleet sim`: placeholder until issue 12 fills it in."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=lambda args: print("fleet sim: not built yet (issue 12)") or 2)
