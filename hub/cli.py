"""`fleet hub`: placeholder until issue 7 fills it in."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=lambda args: print("fleet hub: not built yet (issue 7)") or 2)
