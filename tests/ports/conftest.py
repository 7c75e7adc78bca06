"""The harness every port test shares: run one ported example in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

PORTS = Path(__file__).parent

RunPort = Callable[..., str]


def _run_port(name: str, setup: str, tmp_path: Path, after: str = "") -> str:
    """Run ``tests/ports/<name>.py`` after ``setup`` in a fresh process whose
    ``MLRUNTIME_HOME`` is new, then ``after`` (with the port's globals as ``globals_``);
    return the process's output."""
    script = tmp_path / "run_port.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import runpy
            import mlruntime
            session = mlruntime.get_active_session()
            {textwrap.indent(textwrap.dedent(setup), "            ").strip()}
            globals_ = runpy.run_path({str(PORTS / (name + ".py"))!r}, run_name="__main__")
            print("PORT-OK")
            {textwrap.indent(textwrap.dedent(after), "            ").strip()}
            """
        )
    )
    env = {**os.environ, "MLRUNTIME_HOME": str(tmp_path / "home"), "MLRUNTIME_QUIET": "1"}
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0 and "PORT-OK" in done.stdout, (
        done.stdout[-4000:] + done.stderr[-6000:]
    )
    return done.stdout


@pytest.fixture
def run_port() -> RunPort:
    """``run_port(name, setup, tmp_path, after="")``: see :func:`_run_port`."""
    return _run_port
