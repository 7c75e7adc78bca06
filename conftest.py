"""Shared pytest set-up for every package's tests and the cross-package tests.

- ``MLRUNTIME_HOME`` points at a temporary folder for the whole run (no writes to ``~``).
- ``ray_cluster``: one embedded Ray per test session (``ray.init`` costs seconds here).
- ``@pytest.mark.gpu`` tests are skipped unless ``nvidia-smi`` finds a GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

_HOME = tempfile.mkdtemp(prefix="mlruntime-test-home-")
os.environ.setdefault("MLRUNTIME_HOME", _HOME)

TEST_RAY_CPUS = 4
"""Logical CPUs of the shared test Ray: room for 2-4 small workers on a 2-core machine."""


def _has_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _has_gpu():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU (nvidia-smi found none)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import sys

    if "ray" in sys.modules:
        import mlruntime

        mlruntime.shutdown()
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture
def ray_cluster() -> None:
    """An embedded Ray shared by the whole test session: started on first use (again after a
    test that needed its own cluster), shut down in ``pytest_sessionfinish``."""
    import mlruntime

    mlruntime.init(num_cpus=TEST_RAY_CPUS)
