"""`fleet node`: placeholder until issue 4 fills it in."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=lambda args: print("fleet node: not built yet (issue 4)") or 2)
