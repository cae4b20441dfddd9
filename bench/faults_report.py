"""Runs the fault-injection tests (tests/test_faults_*.py, slow soaks included) and prints each measured
figure and each test's duration: the numbers docs/RELIABILITY.md publishes.

    .venv/bin/python bench/faults_report.py [pytest arguments, e.g. -k node]

The tests report their figures through tests/faultproxy.report, which appends JSON lines to the file
named by FLEET_FAULT_FIGURES; this script sets it, runs pytest, and prints them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fleet-faults-") as work:
        figures = Path(work) / "figures.jsonl"
        junit = Path(work) / "junit.xml"
        started = time.monotonic()
        rc = subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
             *sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_faults_*.py")), *sys.argv[1:]],
            cwd=REPO, env={**os.environ, "FLEET_FAULT_FIGURES": str(figures)})
        took = time.monotonic() - started
        print(f"\nfault tests: exit {rc}, {took:.0f} s wall, load average {os.getloadavg()[0]:.1f}\n")
        rows = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
        for row in rows:
            fault = row.pop("fault")
            print(f"{fault}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
        if junit.exists():
            import xml.etree.ElementTree as ET

            print("\ntest durations:")
            cases = ET.parse(junit).getroot().iter("testcase")
            for case in sorted(cases, key=lambda c: -float(c.get("time", 0))):
                print(f"  {float(case.get('time', 0)):6.1f} s  {case.get('name')}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
