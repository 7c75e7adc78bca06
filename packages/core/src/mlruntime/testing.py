"""Test helpers for mlruntime and its plugins: sample data, a simulated multi-node cluster, and
the plugin conformance kit (:class:`PluginConformance`, from :mod:`mlruntime.plugins.conformance`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa

from mlruntime.plugins.conformance import HEAVY_MODULES, PluginConformance, imported_modules_after

__all__ = [
    "HEAVY_MODULES",
    "PluginConformance",
    "imported_modules_after",
    "load_module_from_path",
    "run_for_result",
    "sample_table",
    "simulated_cluster",
    "wait_for_idle_workers",
    "write_sample_parquet",
]


@contextmanager
def simulated_cluster(nodes: Sequence[tuple[int, int]]) -> Iterator[Any]:
    """A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``), connected.

    Args:
        nodes: ``(cpus, gpus)`` per node, head first; GPUs are fake resources Ray schedules.

    Yields:
        The cluster; this process is connected to it, and disconnected afterwards.
    """
    from ray.cluster_utils import Cluster

    import mlruntime

    mlruntime.shutdown()  # leave any other Ray this process was using
    head_cpus, head_gpus = nodes[0]
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": head_cpus, "num_gpus": head_gpus}
    )
    for cpus, gpus in nodes[1:]:
        cluster.add_node(num_cpus=cpus, num_gpus=gpus)
    cluster.wait_for_nodes()
    mlruntime.init(address=cluster.address)
    try:
        yield cluster
    finally:
        mlruntime.shutdown()
        cluster.shutdown()


def sample_table(start: int, rows: int, features: int = 1) -> pa.Table:
    """A small deterministic table for tests: ``id`` = start..start+rows-1, float32 features
    ``x`` (or ``x0``..``x{n-1}``) derived from the id, and an int32 ``label`` = id % 3."""
    ids = np.arange(start, start + rows, dtype=np.int64)
    columns: dict[str, np.ndarray] = {"id": ids}
    if features == 1:
        columns["x"] = (ids * 0.5).astype(np.float32)
    else:
        for j in range(features):
            columns[f"x{j}"] = np.sin(ids * (j + 1) * 0.01).astype(np.float32)
    columns["label"] = (ids % 3).astype(np.int32)
    return pa.table(columns)


def write_sample_parquet(
    folder: str | os.PathLike[str],
    files: int = 4,
    rows_per_file: int = 250,
    features: int = 3,
    row_group_size: int = 50,
) -> Path:
    """Write ``files`` Parquet files of :func:`sample_table` rows (ids 0.. in file order) into
    ``folder``, each with row groups of ``row_group_size`` rows; return the folder."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    import pyarrow.parquet as pq

    for i in range(files):
        table = sample_table(i * rows_per_file, rows_per_file, features=features)
        pq.write_table(table, target / f"part-{i:03d}.parquet", row_group_size=row_group_size)
    return target


def load_module_from_path(path: str | os.PathLike[str], name: str) -> ModuleType:
    """Import a script (an example) as a module named ``name`` without adding it to
    ``sys.modules``, so functions it defines travel to Ray workers by value.

    Raises:
        ImportError: If ``path`` cannot be loaded.
    """
    spec = importlib.util.spec_from_file_location(name, os.fspath(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {os.fspath(path)!r} as a module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_for_result(
    args: Sequence[str], env: dict[str, str], timeout: float, tail: int = 3000
) -> str:
    """Run a driver script in a fresh process and return what its last ``RESULT`` line says
    (the text after ``RESULT``, stripped); the script prints that line when it got through.

    Raises:
        AssertionError: If the process failed or printed no ``RESULT`` line (with the last
            ``tail`` characters of its output and errors).
    """
    done = subprocess.run(
        list(args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")]
    assert done.returncode == 0 and lines, done.stdout[-tail:] + done.stderr[-tail:]
    return lines[-1].removeprefix("RESULT").strip()


def wait_for_idle_workers(at_least: int, timeout: float = 60.0) -> list[int]:
    """Wait until the cluster keeps at least ``at_least`` idle worker processes for this job
    (:func:`mlruntime.runtime.warm.idle_workers`, all nodes together), polling every 0.1 s.

    Returns:
        Their process ids, sorted: fewer than ``at_least`` if ``timeout`` s passed first.
    """
    from mlruntime.runtime.warm import idle_workers

    deadline = time.monotonic() + timeout
    while True:
        pids = sorted(pid for found in idle_workers().values() for pid in found)
        if len(pids) >= at_least or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)
