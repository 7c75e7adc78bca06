"""What Python environment this process and every Ray node run, and where they differ.

Versions come from package metadata; CUDA builds from the frameworks' build files and libraries,
read without importing the frameworks (missing ones tolerated); GPUs and driver from nvidia-smi.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "COMPARED_FIELDS",
    "FRAMEWORKS",
    "cluster_report",
    "differences",
    "probe",
]

FRAMEWORKS = (
    "ray",
    "pyarrow",
    "numpy",
    "pandas",
    "polars",
    "duckdb",
    "pluggy",
    "xgboost",
    "lightgbm",
    "torch",
    "tensorflow",
    "keras",
    "scikit-learn",
    "optuna",
    "uv",
)
"""Distributions whose versions every report shows."""

COMPARED_FIELDS = ("python", "mlruntime", "plugins", "frameworks", "cuda_builds")
"""Report fields that must agree between nodes (and with the driver)."""


def dist_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (from its metadata), or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _plugins() -> dict[str, str | None]:
    """Distributions registered under the ``mlruntime.plugins`` entry points, with versions."""
    found: dict[str, str | None] = {}
    for entry in importlib.metadata.entry_points(group="mlruntime.plugins"):
        dist = entry.dist
        if dist is not None and dist.metadata["Name"] != "mlruntime":
            found[dist.metadata["Name"]] = dist.version
    return dict(sorted(found.items()))


def _package_file(module: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None


def _literal_assignments(path: Path) -> dict[str, Any]:
    """Top-level ``name = <literal>`` of a Python file, read without importing it."""
    values: dict[str, Any] = {}
    for node in ast.parse(path.read_text()).body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if not isinstance(target, ast.Name) or value is None:
            continue
        mapping = isinstance(value, ast.Call) and bool(value.args)
        if isinstance(value, ast.Call) and value.args:  # collections.OrderedDict([(k, v), ...])
            value = value.args[0]
        try:
            literal = ast.literal_eval(value)
            values[target.id] = dict(literal) if mapping else literal
        except (ValueError, TypeError):
            continue
    return values


def _torch_build() -> dict[str, Any]:
    path = _package_file("torch", "version.py")
    if path is None:
        return {}
    info = _literal_assignments(path)
    return {"cuda": info.get("cuda"), "hip": info.get("hip")}


def _tensorflow_build() -> dict[str, Any]:
    path = _package_file("tensorflow", "python", "platform", "build_info.py")
    if path is None:
        return {}
    info = _literal_assignments(path).get("build_info", {})
    return {
        "cuda": info.get("cuda_version") if info.get("is_cuda_build") else None,
        "cudnn": info.get("cudnn_version") if info.get("is_cuda_build") else None,
    }


def _xgboost_build() -> dict[str, Any]:
    """``xgboost.build_info()``, asked of libxgboost directly (the package is not imported)."""
    folder = _package_file("xgboost", "lib")
    if folder is None:
        return {}
    libraries = sorted(folder.glob("libxgboost*")) or sorted(folder.glob("xgboost*.dll"))
    if not libraries:
        return {"error": f"no libxgboost in {folder}"}
    try:
        import ctypes
        import json

        library = ctypes.CDLL(str(libraries[0]))
        answer = ctypes.c_char_p()
        if library.XGBuildInfo(ctypes.byref(answer)) != 0 or answer.value is None:
            return {"error": "XGBuildInfo failed"}
        info = json.loads(answer.value.decode())
    except Exception as exc:  # a broken install is reported, not raised
        return {"error": f"{type(exc).__name__}: {exc}"}
    version = info.get("CUDA_VERSION")
    cuda = ".".join(str(v) for v in version) if info.get("USE_CUDA") and version else None
    return {"cuda": cuda, "nccl": bool(info.get("USE_NCCL"))}


def _lightgbm_build() -> dict[str, Any]:
    return {} if importlib.util.find_spec("lightgbm") is None else {"cuda": None}


_BUILD_READERS = {
    "torch": _torch_build,
    "tensorflow": _tensorflow_build,
    "xgboost": _xgboost_build,
    "lightgbm": _lightgbm_build,
}


def _cuda_builds() -> dict[str, dict[str, Any]]:
    builds = {}
    for name, reader in _BUILD_READERS.items():
        try:
            info = reader()
        except Exception as exc:
            info = {"error": f"{type(exc).__name__}: {exc}"}
        if info:
            builds[name] = info
    return builds


def _gpus() -> dict[str, Any]:
    """GPUs, driver and the CUDA version the driver supports, from nvidia-smi (if present)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"nvidia_smi": False, "gpus": [], "driver": None, "cuda_driver": None}
    try:
        query = subprocess.run(
            [smi, "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        banner = subprocess.run([smi], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {
            "nvidia_smi": True,
            "gpus": [],
            "driver": None,
            "cuda_driver": None,
            "error": str(exc),
        }
    gpus = []
    driver = None
    for line in query.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 4:
            gpus.append({"index": cells[0], "name": cells[1], "memory": cells[2]})
            driver = cells[3]
    match = re.search(r"CUDA Version:\s*([\d.]+)", banner)
    return {
        "nvidia_smi": True,
        "gpus": gpus,
        "driver": driver,
        "cuda_driver": match.group(1) if match else None,
    }


def probe() -> dict[str, Any]:
    """Describe this process's environment.

    Returns:
        A JSON-serialisable dict: ``host``, ``python`` (version), ``executable``, ``platform``,
        ``mlruntime``, ``plugins`` (distribution -> version), ``frameworks`` (distribution ->
        version or None), ``cuda_builds`` (framework -> the CUDA it was built with, None for a
        CPU build), and ``gpus`` (``gpus``, ``driver``, ``cuda_driver`` from nvidia-smi).
    """
    from mlruntime.__about__ import __version__

    return {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "mlruntime": __version__,
        "plugins": _plugins(),
        "frameworks": {name: dist_version(name) for name in FRAMEWORKS},
        "cuda_builds": _cuda_builds(),
        "gpus": _gpus(),
    }


def _flatten(report: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for field in COMPARED_FIELDS:
        value = report.get(field)
        if isinstance(value, dict):
            for key, inner in value.items():
                if isinstance(inner, dict):
                    for sub, leaf in inner.items():
                        if sub != "error":
                            flat[f"{field}.{key}.{sub}"] = leaf
                else:
                    flat[f"{field}.{key}"] = inner
        else:
            flat[field] = value
    return flat


def _major_minor(version: str | None) -> tuple[int, ...] | None:
    if not version:
        return None
    parts = re.findall(r"\d+", version)[:2]
    return tuple(int(p) for p in parts) if parts else None


def differences(reports: dict[str, dict[str, Any]]) -> list[str]:
    """Warnings for every way the named environments differ, and for GPU driver mismatches.

    Args:
        reports: Name (``"driver"``, a node's address) -> :func:`probe` output.

    Returns:
        One human-readable line per difference: a field whose value is not the same
        everywhere (python, mlruntime, plugin, framework version, CUDA build), a framework built
        for a newer CUDA than a node's driver supports, a GPU node whose frameworks are CPU
        builds.
    """
    warnings: list[str] = []
    flat = {name: _flatten(report) for name, report in reports.items()}
    keys = sorted({k for values in flat.values() for k in values})
    for key in keys:
        seen = {name: values.get(key) for name, values in flat.items()}
        if len({repr(v) for v in seen.values()}) > 1:
            listing = ", ".join(
                f"{name}: {value if value is not None else '-'}" for name, value in seen.items()
            )
            warnings.append(f"{key} differs: {listing}")
    for name, report in reports.items():
        gpus = report.get("gpus") or {}
        if not gpus.get("gpus"):
            continue
        driver_cuda = _major_minor(gpus.get("cuda_driver"))
        for framework, build in (report.get("cuda_builds") or {}).items():
            built = _major_minor(build.get("cuda"))
            if built is None:
                if framework in ("torch", "tensorflow"):
                    warnings.append(
                        f"{name}: has {len(gpus['gpus'])} GPU(s) but {framework} is a CPU build"
                    )
                continue
            if driver_cuda is not None and built > driver_cuda:
                warnings.append(
                    f"{name}: {framework} was built with CUDA {build['cuda']}, newer than the "
                    f"CUDA {gpus['cuda_driver']} its driver {gpus.get('driver')} supports; "
                    "update the NVIDIA driver or install a build for an older CUDA"
                )
    return warnings


def _probe_remote() -> dict[str, Any]:
    return probe()


def cluster_report(nodes: bool = True) -> dict[str, Any]:
    """This process's environment and, with ``nodes``, every alive Ray node's (connects).

    Each node is probed by a zero-CPU task pinned to it, so busy nodes answer too.

    Args:
        nodes: Also probe every node of the cluster (connecting to, or starting, Ray).

    Returns:
        ``{"driver": probe(), "nodes": {address: probe()}, "warnings": [...]}``.
    """
    report: dict[str, Any] = {"driver": probe(), "nodes": {}, "warnings": []}
    if nodes:
        from mlruntime.runtime.cluster import get_nodes

        alive = get_nodes()
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(num_cpus=0, max_retries=0)(_probe_remote)
        refs = [
            remote.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
            ).remote()
            for n in alive
        ]
        for node, found in zip(alive, ray.get(refs, timeout=300), strict=True):
            name = node.address or node.node_id
            if name in report["nodes"]:  # several nodes on one address (tests, one machine)
                name = f"{name}/{node.node_id[:8]}"
            report["nodes"][name] = {**found, "node_id": node.node_id, "is_head": node.is_head}
    compared = {"driver": report["driver"], **report["nodes"]}
    report["warnings"] = differences(compared)
    return report
