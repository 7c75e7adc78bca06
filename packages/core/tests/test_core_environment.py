"""Preconfigured environments (locks, ``mlruntime env``) and extra packages on every worker.

An internal package repository is modelled by a PEP 503 simple index on loopback
(``python -m http.server``) holding a wheel made in the test; its access log shows downloads.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import re
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

import mlruntime
from mlruntime.cli import main
from mlruntime.errors import ConfigError
from mlruntime.runtime import locks, packages
from mlruntime.runtime.environment import differences, probe

ROOT = Path(__file__).resolve().parents[3]
LOCKS = {name: ROOT / "environments" / name / "requirements.lock" for name in ("cpu", "gpu")}
OWN = {"mlruntime", "mlruntime-xgboost", "mlruntime-lightgbm", "mlruntime-pytorch"} | {
    "mlruntime-tensorflow"
}


# -- the locks ---------------------------------------------------------------------------------


def _package_requirements() -> list[tuple[str, Requirement]]:
    found = []
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
        for text in [*project.get("dependencies", []), *extras]:
            requirement = Requirement(text)
            if locks.normalize(requirement.name) not in OWN:
                found.append((pyproject.parent.name, requirement))
    return found


@pytest.mark.parametrize("name", sorted(LOCKS), ids=lambda n: f"{n}_lock")
def test_each_lock_satisfies_every_dependency_of_every_package(name: str) -> None:
    entries = locks.read_lock(LOCKS[name])
    problems = []
    for package, requirement in _package_requirements():
        entry = entries.get(locks.normalize(requirement.name))
        if entry is None:
            problems.append(f"{package}: {requirement} is not in the {name} lock")
        elif not requirement.specifier.contains(Version(entry.version), prereleases=True):
            problems.append(f"{package}: {requirement} but the {name} lock has {entry.version}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(LOCKS), ids=lambda n: f"{n}_lock")
def test_each_lock_pins_exact_versions_with_hashes(name: str) -> None:
    entries = locks.read_lock(LOCKS[name])
    assert len(entries) > 100
    unhashed = [e.name for e in entries.values() if not any("--hash=sha256:" in x for x in e.lines)]
    assert not unhashed
    for wanted in ("scikit-learn", "polars", "optuna", "transformers", "matplotlib", "uv"):
        assert wanted in entries


def test_cpu_lock_has_cpu_torch_and_gpu_lock_has_cuda_builds() -> None:
    cpu, gpu = (locks.read_lock(LOCKS[n]) for n in ("cpu", "gpu"))
    assert cpu["torch"].version.endswith("+cpu")
    assert "+" not in gpu["torch"].version  # PyPI's Linux torch wheels are CUDA builds
    assert any(name.startswith("nvidia-cuda-runtime") for name in gpu)
    assert not any(name.startswith("nvidia-cuda-runtime") for name in cpu)
    assert "tensorflow" in gpu["nvidia-cudnn-cu12"].via  # tensorflow[and-cuda]


def test_dockerfiles_install_exactly_the_lock_with_the_venv_commands() -> None:
    for name in LOCKS:
        dockerfile = (ROOT / "environments" / name / "Dockerfile").read_text()
        assert f"environments/{name}/requirements.lock" in dockerfile
        assert "uv pip sync --python /opt/mlruntime/bin/python --require-hashes" in dockerfile
        assert "uv pip install --python /opt/mlruntime/bin/python --no-deps" in dockerfile


_LOCK = """\
# header
alpha==1.0 \\
    --hash=sha256:aa
    # via -r requirements.in
beta==2.0 \\
    --hash=sha256:bb
    # via
    #   alpha
    #   gamma
gamma==3.0+cpu \\
    --hash=sha256:cc
    # via -r requirements.in
delta==4.0 \\
    --hash=sha256:dd
    # via gamma
"""


def test_lock_subset_follows_what_each_entry_was_pulled_in_by(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(_LOCK)
    entries = locks.read_lock(lock)
    assert [e.version for e in entries.values()] == ["1.0", "2.0", "3.0+cpu", "4.0"]
    assert entries["alpha"].top_level and entries["beta"].via == {"alpha", "gamma"}
    assert locks.closure(entries, ["alpha"]) == ["alpha", "beta"]
    assert locks.closure(entries, ["gamma"]) == ["beta", "gamma", "delta"]
    with pytest.raises(ConfigError, match="omega not in the lock"):
        locks.closure(entries, ["omega"])


def test_env_check_says_what_differs_from_a_lock(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(_LOCK)
    installed = {
        "Alpha": "1.0",
        "beta": "2.1",
        "gamma": "3.0+cpu",
        "epsilon": "5",
        "mlruntime": "0",
    }
    report = locks.check_lock(lock, installed)
    assert report == {
        "missing": [{"name": "delta", "locked": "4.0", "installed": None}],
        "different": [{"name": "beta", "locked": "2.0", "installed": "2.1"}],
        "extra": [{"name": "epsilon", "locked": None, "installed": "5"}],
    }


def test_env_check_command_exits_1_on_differences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(_LOCK)
    assert main(["env", "check", "--lock", str(lock), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in out["missing"]} >= {"alpha", "delta"}


def test_unknown_environment_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown environment 'tpu'"):
        locks.find_lock("tpu")


@pytest.mark.slow
def test_env_create_builds_the_cpu_locks_core_subset(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    code = main(
        [
            "env",
            "create",
            "cpu",
            str(venv),
            "--packages",
            "core",
            "--only-needed",
            "--repo",
            str(ROOT),
        ]
    )
    assert code == 0
    entries = locks.read_lock(LOCKS["cpu"])
    out = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import json, mlruntime, pyarrow, ray, duckdb, pandas; "
            "print(json.dumps([mlruntime.__version__, pyarrow.__version__, ray.__version__]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == [
        mlruntime.__version__,
        entries["pyarrow"].version,
        entries["ray"].version,
    ]
    # exactly the lock's subset: nothing from the data-science set came along
    listed = subprocess.run(
        [sys.executable, "-m", "uv", "pip", "list", "--python", str(venv / "bin" / "python")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "torch" not in listed and "scikit-learn" not in listed


# -- mlruntime env -----------------------------------------------------------------------------


def test_probe_reports_versions_and_cuda_builds_without_importing_torch() -> None:
    loaded = "torch" in sys.modules
    report = probe()
    assert report["mlruntime"] == mlruntime.__version__
    assert report["python"] == ".".join(map(str, sys.version_info[:3]))
    assert "mlruntime-xgboost" in report["plugins"]
    if report["frameworks"]["torch"]:
        assert "cuda" in report["cuda_builds"]["torch"]
    assert ("torch" in sys.modules) == loaded


def test_differences_name_the_field_and_every_value() -> None:
    base = probe()
    other = json.loads(json.dumps(base))
    other["frameworks"]["numpy"] = "0.1"
    other["gpus"] = {
        "gpus": [{"index": "0", "name": "H100"}],
        "driver": "535",
        "cuda_driver": "12.2",
    }
    other["cuda_builds"]["xgboost"] = {"cuda": "12.9"}
    warnings = differences({"driver": base, "10.0.0.2": other})
    assert any(w.startswith("frameworks.numpy differs") and "10.0.0.2: 0.1" in w for w in warnings)
    assert any("xgboost was built with CUDA 12.9, newer than the CUDA 12.2" in w for w in warnings)
    assert differences({"driver": base, "same": json.loads(json.dumps(base))}) == []


def test_env_json_shows_this_process_and_every_node(
    ray_cluster: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["env", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"driver", "nodes", "warnings"}
    assert len(report["nodes"]) == len(mlruntime.get_nodes())
    node = next(iter(report["nodes"].values()))
    assert node["mlruntime"] == report["driver"]["mlruntime"]
    assert node["frameworks"] == report["driver"]["frameworks"]
    assert code == (1 if report["warnings"] else 0)


# -- extra packages on workers -----------------------------------------------------------------


def _wheel(name: str, version: str, value: int) -> tuple[str, bytes]:
    module = name.replace("-", "_")
    files = {
        f"{module}/__init__.py": f"VALUE = {value}\n",
        f"{module}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ),
        f"{module}-{version}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: mlruntime-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{module}-{version}.dist-info/RECORD"] = (
        "\n".join([*record, f"{module}-{version}.dist-info/RECORD,,"]) + "\n"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return f"{module}-{version}-py3-none-any.whl", buffer.getvalue()


class Index:
    """A simple index on loopback and its access log."""

    def __init__(self, url: str, log: Path, package: str) -> None:
        self.url = url
        self.log = log
        self.package = package

    def wheel_downloads(self) -> int:
        return len(re.findall(r'"GET [^"]+\.whl HTTP', self.log.read_text()))


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    root = tmp_path_factory.mktemp("index")
    # a name never seen before, so uv's cache cannot hold it from an earlier run
    package = f"mlruntime-probe-{uuid.uuid4().hex[:10]}"
    folder = root / "simple" / package
    folder.mkdir(parents=True)
    filename, data = _wheel(package, "1.0.0", 42)
    (folder / filename).write_bytes(data)
    (folder / "index.html").write_text(
        f'<html><body><a href="{filename}">{filename}</a></body></html>'
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = root / "access.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                "127.0.0.1",
                "-d",
                str(root),
            ],
            stdout=sink,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "the index did not start"
            time.sleep(0.05)
        yield Index(f"http://127.0.0.1:{port}/simple", log, package)
    finally:
        server.terminate()
        server.wait(10)


def _read_package(module: str) -> tuple[int, str]:
    import importlib

    return importlib.import_module(module).VALUE, sys.executable


@pytest.fixture
def fresh_package_state() -> Iterator[None]:
    """Forget what this process remembers about worker packages (as a new driver would)."""

    def forget() -> None:
        packages._resolved.clear()
        packages._installed.clear()
        packages.set_session_packages(None)

    forget()
    yield
    forget()
    from mlruntime.runtime.distributor import release_idle_groups

    release_idle_groups()


def test_workers_import_a_package_from_the_internal_index_and_a_second_job_downloads_nothing(
    ray_cluster: None, index: Index, fresh_package_state: None
) -> None:
    from mlruntime.runtime.distributor import release_idle_groups

    module = index.package.replace("-", "_")
    job = mlruntime.Distributor(mlruntime.ScalingConfig(num_workers=2), verbose=False)
    with mlruntime.worker_packages([index.package], index_url=index.url):
        first = job.run(_read_package_job(module))
    assert [value for value, _ in first.return_values] == [42, 42]
    assert all(exe != sys.executable for _, exe in first.return_values)  # the uv overlay
    downloads = index.wheel_downloads()
    assert downloads >= 1

    release_idle_groups()  # new worker processes, and a driver that remembers nothing
    packages._resolved.clear()
    packages._installed.clear()
    with mlruntime.worker_packages([index.package], index_url=index.url):
        second = job.run(_read_package_job(module))
    assert [value for value, _ in second.return_values] == [42, 42]
    assert index.wheel_downloads() == downloads  # uv's cache served every node


def _read_package_job(module: str) -> Any:
    from functools import partial

    return partial(_read_package, module)


def test_init_pip_and_run_pip_reach_every_worker(
    ray_cluster: None, index: Index, fresh_package_state: None
) -> None:
    module = index.package.replace("-", "_")
    mlruntime.init(pip=[index.package], index_url=index.url)
    result = mlruntime.Distributor(mlruntime.ScalingConfig(num_workers=2), verbose=False).run(
        _read_package_job(module)
    )
    assert [value for value, _ in result.return_values] == [42, 42]
    packages.set_session_packages(None)
    packages.set_session_packages(None, index_url=index.url)  # index only: run(pip=) adds one
    again = mlruntime.Distributor(mlruntime.ScalingConfig(num_workers=1), verbose=False).run(
        _read_package_job(module), pip=[index.package]
    )
    assert [value for value, _ in again.return_values] == [42]


def test_an_unknown_package_fails_fast_with_the_resolvers_message(
    index: Index, fresh_package_state: None
) -> None:
    started = time.monotonic()
    with (
        pytest.raises(ConfigError, match="not found in the package registry") as caught,
        mlruntime.worker_packages(["no-such-package-mlruntime"], index_url=index.url),
    ):
        pass
    assert time.monotonic() - started < 20
    assert "no-such-package-mlruntime" in str(caught.value)
    with pytest.raises(ConfigError, match="not found in the package registry"):
        mlruntime.init(pip=["no-such-package-mlruntime"], index_url=index.url)


def test_pip_must_be_a_list_of_requirements() -> None:
    with pytest.raises(ConfigError, match="list of requirements"):
        packages.make_packages("emoji")
    assert packages.make_packages(["a ", "b"], "http://i/simple").uv_command(["uv"], "py")[-1] == (
        "python"
    )
