"""`fleet server`: placeholder until issue 6 fills it in."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=lambda args: print("fleet server: not built yet (issue 6)") or 2)
