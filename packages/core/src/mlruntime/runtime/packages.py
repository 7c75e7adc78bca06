"""Extra pip packages on every worker: a uv overlay environment started through Ray's runtime env.

Workers run ``uv run --with PKG ... python`` (Ray's ``py_executable``), layered on the node's own
environment; the driver resolves first (fast failure) and every node installs before placement.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mlruntime.errors import ConfigError

__all__ = [
    "INSTALL_TIMEOUT_S",
    "WorkerPackages",
    "current_packages",
    "prepare_runtime_env",
    "set_session_packages",
    "worker_packages",
]

logger = logging.getLogger(__name__)

INSTALL_TIMEOUT_S = 900.0
"""How long one node may take to download and install the packages before the job fails."""


@dataclass(frozen=True)
class WorkerPackages:
    """Requirements installed on every worker, and where they come from.

    Attributes:
        pip: Requirement strings (``"emoji==2.12"``, ``"mylib>=1,<2"``).
        index_url: The package index instead of PyPI (an internal repository), or None.
        extra_index_urls: More indexes searched as well.
    """

    pip: tuple[str, ...] = ()
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pip)

    def merged(self, other: WorkerPackages) -> WorkerPackages:
        """These packages and ``other``'s; ``other``'s index wins when it names one."""
        return WorkerPackages(
            pip=tuple(dict.fromkeys((*self.pip, *other.pip))),
            index_url=other.index_url or self.index_url,
            extra_index_urls=tuple(
                dict.fromkeys((*self.extra_index_urls, *other.extra_index_urls))
            ),
        )

    def uv_command(self, uv: Sequence[str], python: str) -> list[str]:
        """The ``uv run`` command that starts ``python`` with these packages on top of its own."""
        cmd = [*uv, "run", "--no-project", "--python", python]
        for requirement in self.pip:
            cmd += ["--with", requirement]
        if self.index_url:
            cmd += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            cmd += ["--extra-index-url", url]
        return [*cmd, "python"]


def make_packages(
    pip: Sequence[str] | None, index_url: str | None = None, extra_index_urls: Sequence[str] = ()
) -> WorkerPackages:
    """Validate user arguments into :class:`WorkerPackages`.

    Raises:
        ConfigError: If ``pip`` is a single string or holds a non-string, or an index is not a
            string.
    """
    if isinstance(pip, str):
        raise ConfigError(
            f"pip must be a list of requirements, got the string {pip!r}; use [{pip!r}]"
        )
    if isinstance(extra_index_urls, str):
        raise ConfigError(
            f"extra_index_urls must be a list of URLs, got the string {extra_index_urls!r}"
        )
    requirements = tuple(pip or ())
    bad = [r for r in requirements if not isinstance(r, str) or not r.strip()]
    if bad:
        raise ConfigError(
            f"pip entries must be requirement strings such as 'emoji==2.12', got {bad!r}"
        )
    if index_url is not None and not isinstance(index_url, str):
        raise ConfigError(f"index_url must be a URL string, got {index_url!r}")
    urls = tuple(extra_index_urls)
    if any(not isinstance(u, str) for u in urls):
        raise ConfigError(f"extra_index_urls must be URL strings, got {list(urls)!r}")
    return WorkerPackages(tuple(r.strip() for r in requirements), index_url, urls)


_session = WorkerPackages()
_job: contextvars.ContextVar[WorkerPackages | None] = contextvars.ContextVar(
    "mlruntime_worker_packages", default=None
)
_lock = threading.Lock()
_resolved: set[WorkerPackages] = set()
_installed: dict[tuple[WorkerPackages, frozenset[str]], str] = {}


def set_session_packages(
    pip: Sequence[str] | None, index_url: str | None = None, extra_index_urls: Sequence[str] = ()
) -> None:
    """Install these packages on every later job's workers (``mlruntime.init(pip=...)``).

    They are resolved here at once, so a package that cannot be found fails now.

    Raises:
        ConfigError: For malformed arguments, or with uv's message when they do not resolve.
    """
    global _session
    packages = make_packages(pip, index_url, extra_index_urls)
    resolve_on_driver(packages)
    _session = packages


@contextlib.contextmanager
def worker_packages(
    pip: Sequence[str], index_url: str | None = None, extra_index_urls: Sequence[str] = ()
) -> Iterator[WorkerPackages]:
    """Install extra packages on the workers of the jobs started inside this block.

    They come on top of the session's (``mlruntime.init(pip=...)``); any distributor, estimator
    ``fit`` or tuner started in the block gets them.

    Args:
        pip: Requirement strings.
        index_url: A package index instead of the session's (or PyPI).
        extra_index_urls: More indexes.

    Yields:
        The packages the block's jobs install (session's and these).

    Raises:
        ConfigError: For malformed arguments, or with uv's message when they do not resolve —
            on entering the block.

    Example:
        >>> with mlruntime.worker_packages(["emoji==2.12"]):
        ...     XGBEstimator(...).fit(dc, input_cols=cols, label_col="y")
    """
    packages = make_packages(pip, index_url, extra_index_urls)
    merged = current_packages().merged(packages)
    resolve_on_driver(merged)
    token = _job.set(merged)
    try:
        yield merged
    finally:
        _job.reset(token)


def current_packages() -> WorkerPackages:
    """The packages a job started now installs on its workers (session's and the block's)."""
    job = _job.get()
    return _session if job is None else job


def uv_invocation() -> list[str]:
    """How to run uv from this process: ``python -m uv`` (the ``uv`` package) or ``uv`` on PATH.

    Raises:
        ConfigError: If uv is not installed.
    """
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    found = shutil.which("uv")
    if found:
        return [found]
    raise ConfigError(
        f"extra worker packages need uv in the Python environment ({sys.executable}); "
        "install it with: pip install uv"
    )


def _install_here(packages: WorkerPackages, timeout: float) -> tuple[int, str, str]:
    """Resolve and install ``packages`` into uv's cache on this machine; (rc, command, output)."""
    uv = uv_invocation()
    cmd = packages.uv_command(uv, sys.executable)
    try:
        proc = subprocess.run(
            [*cmd, "-c", "pass"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return 124, shlex.join(cmd), f"uv did not finish within {timeout:g}s"
    return proc.returncode, shlex.join(cmd), (proc.stderr or proc.stdout).strip()


def _failure(packages: WorkerPackages, where: str, output: str) -> ConfigError:
    source = packages.index_url or "PyPI"
    if packages.extra_index_urls:
        source += " and " + ", ".join(packages.extra_index_urls)
    return ConfigError(
        f"the worker packages {list(packages.pip)} cannot be installed {where} (from {source}); "
        f"uv says:\n{output}\nCheck the names and versions, or point index_url= / "
        "extra_index_urls= at the index that holds them."
    )


def resolve_on_driver(packages: WorkerPackages) -> None:
    """Resolve (and cache) ``packages`` with uv here, so a bad requirement fails in seconds.

    Raises:
        ConfigError: With uv's resolver message when they cannot be resolved or installed.
    """
    if not packages or packages in _resolved:
        return
    code, _, output = _install_here(packages, INSTALL_TIMEOUT_S)
    if code != 0:
        raise _failure(packages, "on the driver", output)
    _resolved.add(packages)


def _node_install(packages: WorkerPackages, timeout: float) -> tuple[int, str, str]:
    code, _, output = _install_here(packages, timeout)
    return code, shlex.join(packages.uv_command(uv_invocation(), sys.executable)), output


_remote_install: Any = None


def prepare_runtime_env(packages: WorkerPackages, nodes: Sequence[Any]) -> dict[str, Any] | None:
    """Install ``packages`` on every node and return the workers' Ray runtime env.

    Resolves on the driver first, then runs the same ``uv run`` on every node (a zero-CPU task
    pinned there) so the workers start from uv's cache; both steps are remembered per package
    set and set of nodes, so the next job does nothing.

    Args:
        packages: What to install; empty means nothing to do.
        nodes: The cluster's nodes (``get_nodes()``); those with CPUs or GPUs install.

    Returns:
        ``{"py_executable": "... uv run --with ... python"}``, or None for no packages.

    Raises:
        ConfigError: With uv's message when a node cannot install them, or when nodes run
            Python from different paths.
    """
    global _remote_install
    if not packages:
        return None
    resolve_on_driver(packages)
    nodes = [n for n in nodes if n.num_cpus or n.num_gpus]
    key = (packages, frozenset(n.node_id for n in nodes))
    with _lock:
        if key in _installed:
            return {"py_executable": _installed[key]}
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if _remote_install is None:
        _remote_install = ray.remote(num_cpus=0, max_retries=0)(_node_install)
    refs = [
        _remote_install.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
        ).remote(packages, INSTALL_TIMEOUT_S)
        for n in nodes
    ]
    results = ray.get(refs, timeout=INSTALL_TIMEOUT_S + 60)
    commands = {}
    for node, (code, command, output) in zip(nodes, results, strict=True):
        if code != 0:
            raise _failure(packages, f"on node {node.address or node.node_id}", output)
        commands[node.address or node.node_id] = command
    if len(set(commands.values())) > 1:
        listing = "; ".join(f"{node}: {cmd}" for node, cmd in commands.items())
        raise ConfigError(
            "extra worker packages need every node to run the same Python environment path, "
            f"but they differ: {listing}. Use one image (or venv path) on every node."
        )
    command = next(iter(commands.values()))
    with _lock:
        _installed[key] = command
    logger.debug("worker packages ready on %d node(s): %s", len(nodes), command)
    return {"py_executable": command}
