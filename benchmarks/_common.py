"""What the benchmark scripts share: timing a dsaudit process, and the usual baselines.

Import it from a script in this folder (``from _common import ...``): running
``python benchmarks/NAME.py`` puts the folder on ``sys.path``. Importing it also puts the
checkout on ``sys.path``, so the scripts run without installing dsaudit.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

# Runs `python -m cli ...` in this process, then prints its own peak RSS (MB) on stderr: one
# process per command, so the peak is that command's alone. The peak is the kernel's VmHWM of
# this process image, not ru_maxrss: ru_maxrss survives exec, so a child started from a
# benchmark holding gigabytes of arrays reported the parent's size (3.4 GB for a 2.1 GB ingest).
_PEAK_RSS = (
    "import resource, runpy, sys\n"
    "sys.argv = ['dsaudit', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('cli', run_name='__main__')\n"
    "except SystemExit as stop:\n"
    "    assert not stop.code, stop.code\n"
    "try:\n"
    "    status = open('/proc/self/status').read().split('VmHWM:')[1].split()\n"
    "    peak = int(status[0]) / 1024\n"
    "except (OSError, IndexError, ValueError):\n"
    "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
    "print(peak, file=sys.stderr)\n"
)


@dataclass(frozen=True)
class Process:
    """One finished dsaudit command."""

    seconds: float
    """Wall time from start to exit (interpreter start-up included)."""
    peak_rss_mb: float
    stdout: str


def dsaudit(*args: str) -> Process:
    """Run ``dsaudit ARGS...`` as its own process; raise with its stderr if it fails."""
    command = [sys.executable, "-c", _PEAK_RSS, *args]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"dsaudit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return Process(seconds, float(done.stderr.strip().splitlines()[-1]), done.stdout)


def exact_loop_seconds(queries: np.ndarray, against: np.ndarray, total: int) -> float:
    """The loop from the usual question, corrected, extrapolated to ``total`` query images.

    Times ``np.equal(against, q).all(axis=(1, 2)).any()`` for each image ``q`` of ``queries``
    (a sample), and scales the time per image to ``total``.

    Args:
        queries: (k, H, W) sample of the images asked about, k >= 1.
        against: (m, H, W) the images they are looked for in, in memory.
        total: how many query images the full loop would ask about.
    """
    started = time.perf_counter()
    for image in queries:
        np.equal(against, image).all(axis=(1, 2)).any()
    return (time.perf_counter() - started) / len(queries) * total


def unique_rows_seconds(rows: np.ndarray) -> float:
    """Seconds of ``np.unique(rows, axis=0, return_inverse=True)``: exact duplicates in memory.

    Args:
        rows: (n, d), every image flattened to one row.
    """
    started = time.perf_counter()
    np.unique(rows, axis=0, return_inverse=True)
    return time.perf_counter() - started
