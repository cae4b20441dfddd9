"""`fleet server validate` on N device files (10 components each, a shared include).

    .venv/bin/python bench/config_server_validate.py [--devices 1000]

Prints the wall time of the whole command (Python start and imports included) and the time it
reports for reading and checking the files, best of three runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from config_server_storm import REPO, write_registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-validate-") as work:
        folder = Path(work) / "devices"
        write_registry(folder, args.devices)
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "fleet.cli", "server", "validate", "--devices", str(folder)],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            runs.append((time.perf_counter() - t0, out.stderr.strip().splitlines()[-1], out.returncode))
        took, said, code = min(runs)
        print(f"fleet server validate on {args.devices} files: {took:.2f} s for the whole command, best of 3 "
              f"(exit {code}; it reports: {said})")


if __name__ == "__main__":
    main()
