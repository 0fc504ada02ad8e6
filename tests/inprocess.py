"""The command line run inside the test process, for usage errors.

A new interpreter costs about 3 s here before ``fer-bench`` reads its first option (most of it importing torch),
so the many one-line usage-error checks run ``fer_bench.cli.main`` through click's runner instead. Only checks
that stop before any work belong here: runs, kills and plugins that register methods keep a real subprocess
(``test_cli.py``, ``test_run_faults.py``), which also covers the installed entry point's exit codes.
"""
from __future__ import annotations

import signal
import subprocess

from click.testing import CliRunner


def fer_bench_in_process(*args: str) -> subprocess.CompletedProcess:
    """``fer-bench ARGS`` in this process, as a CompletedProcess (returncode, stdout, stderr)."""
    from fer_bench.cli import main

    sigterm = signal.getsignal(signal.SIGTERM)                 # main() turns SIGTERM into Ctrl-C: not for pytest
    try:
        result = CliRunner().invoke(main, list(args), prog_name="fer-bench")
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["fer-bench", *args], result.exit_code, result.stdout, result.stderr)
