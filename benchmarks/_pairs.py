"""Shared by the benchmark screens (networks.py, recipe_screen.py): workers two at a time, one thread each."""
from __future__ import annotations

import os
import subprocess
import sys


def run_in_pairs(script: str, names: list[str], common: list[str], env: dict[str, str] | None = None) -> list[tuple]:
    """``python script --worker NAME *common`` for each name, two at a time (the machine's two cores); exits with a
    one-line error naming the pair if a worker fails. Returns the load averages before and after each pair."""
    loads = [os.getloadavg()]
    for i in range(0, len(names), 2):
        procs = [subprocess.Popen([sys.executable, script, "--worker", n, *common], env=env) for n in names[i:i + 2]]
        if any(pr.wait() for pr in procs):
            sys.exit(f"error: a worker of {names[i:i + 2]} failed")
        loads.append(os.getloadavg())
    return loads
