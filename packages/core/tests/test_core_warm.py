"""Warm worker processes: preloaded modules and the idle pool topped up after jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import mlruntime
from mlruntime.errors import ConfigError
from mlruntime.runtime.warm import (
    PRELOAD_ENV,
    TRIAL_IMPORTS,
    preload_modules,
    ray_system_config,
    with_trial_imports,
)
from mlruntime.testing import run_for_result


def test_preload_names_are_checked_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert preload_modules(["json", "email.mime", "json"]) == ["json", "email.mime"]
    assert preload_modules(" json , csv,") == ["json", "csv"]
    monkeypatch.setenv(PRELOAD_ENV, "csv,json")
    assert preload_modules(None) == ["csv", "json"]
    monkeypatch.delenv(PRELOAD_ENV)
    assert preload_modules(None) == []
    with pytest.raises(ConfigError, match="no module named 'xgbost'"):
        preload_modules(["json", "xgbost"])
    with pytest.raises(ConfigError, match="'json mime' is not a module name"):
        preload_modules(["json mime"])
    with pytest.raises(ConfigError, match="must be module names"):
        preload_modules([1])  # type: ignore[list-item]


def test_a_dotted_name_is_found_without_importing_its_package(tmp_path: Path) -> None:
    package = tmp_path / "loud_package"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "quiet.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        assert preload_modules(["loud_package.quiet"]) == ["loud_package.quiet"]
        with pytest.raises(ConfigError, match=r"no module named 'loud_package\.missing'"):
            preload_modules(["loud_package.missing"])
        assert "loud_package" not in sys.modules
    finally:
        sys.path.remove(str(tmp_path))


def test_system_config_preloads_and_keeps_what_the_user_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ray_system_config(["json"], None) == {
        "preload_python_modules": ["json"],
        "prestart_worker_first_driver": False,  # init asks for this job's idle workers
    }
    mine = {"prestart_worker_first_driver": True, "object_timeout_milliseconds": 5}
    assert ray_system_config([], mine) == mine
    with pytest.raises(ConfigError, match="disagree"):
        ray_system_config(["json"], {"preload_python_modules": ["csv"]})
    # no top-up (switched off, or a job-wide runtime env): Ray keeps its own idle workers
    assert ray_system_config([], None, top_up=False) == {}
    monkeypatch.setenv("MLRUNTIME_TOP_UP", "0")
    assert ray_system_config([], None) == {}


def test_preloading_ray_tune_preloads_what_a_trial_imports_too() -> None:
    # a run's first trials waited for these imports on their processes (first trial started
    # 0.09-0.13 s after Tune's fit began; 0.05-0.06 s with them preloaded)
    assert ray_system_config(["ray.tune", "xgboost"], None)["preload_python_modules"] == [
        "ray.tune",
        "xgboost",
        TRIAL_IMPORTS,
    ]
    assert ray_system_config(["json"], None)["preload_python_modules"] == ["json"]
    assert with_trial_imports(["ray.tune.search", TRIAL_IMPORTS]) == [
        "ray.tune.search",
        TRIAL_IMPORTS,
    ]
    # the module imports the trial's side of mlruntime.tune and no framework (a fresh process)
    code = (
        f"import sys, {TRIAL_IMPORTS}; "
        "print(sorted(m for m in ('xgboost', 'lightgbm', 'torch', 'tensorflow', "
        "'mlruntime.tune.tuner', 'mlruntime.runtime.staging') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    assert loaded == "['mlruntime.runtime.staging', 'mlruntime.tune.tuner']"


def test_preload_for_a_running_ray_is_refused(ray_cluster: None) -> None:
    # the shared test Ray preloads nothing: asking for a module later cannot take effect
    with pytest.raises(ConfigError, match="preload takes effect when Ray starts"):
        mlruntime.init(preload=["json"])
    mlruntime.init(preload=[])  # what it has: fine


# A fresh embedded Ray (2 CPUs) in its own process: the pool state is known there.
_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import mlruntime
    from mlruntime.errors import ConfigError
    from mlruntime.runtime.scaling import ScalingConfig, WorkerResourceConfig, resolve_scaling
    from mlruntime.runtime.warm import SPARE_WORKERS, top_up_idle_workers
    from mlruntime.runtime.workers import WorkerGroup
    from mlruntime.testing import wait_for_idle_workers as idle

    out = {}
    try:
        mlruntime.init(address="127.0.0.9:6379", preload=["warm_probe"])
    except ConfigError as exc:
        out["cluster_refused"] = str(exc)
    mlruntime.init(num_cpus=2, preload=["warm_probe"])
    import ray
    from ray._private.worker import global_worker

    def serialization_ready():
        return global_worker.current_job_id in global_worker.serialization_context_map

    deadline = time.monotonic() + 10  # built in the background, nothing put yet
    while not serialization_ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    out["serialization_ready"] = serialization_ready()

    def probe():
        import warm_probe
        return os.getpid(), warm_probe.IMPORTED_AT

    two = ScalingConfig(num_workers=2, resources_per_worker=WorkerResourceConfig(num_cpus=1))
    pool = out["pool"] = 2 + SPARE_WORKERS  # one per CPU and the spare
    out["idle_at_start"] = idle(pool)
    group = WorkerGroup(resolve_scaling(two, mlruntime.get_nodes()))
    asked = time.time()
    group.start()
    first = group.run(probe)
    out["first_pids"] = sorted(p for p, _ in first)
    out["imported_before_asked"] = all(at < asked for _, at in first)
    ended = [a._actor_id.binary() for a in [*group.actors, group.state]]
    group.shutdown(top_up=False)
    out["idle_after_shutdown"] = idle(0)
    out["started"] = sum(top_up_idle_workers(ended_actor_ids=ended, wait=True).values())
    out["idle_after_top_up"] = idle(pool)
    out["again"] = top_up_idle_workers(wait=True)
    group = WorkerGroup(resolve_scaling(two, mlruntime.get_nodes()))
    group.start()
    out["second_pids"] = sorted(p for p, _ in group.run(probe))
    group.shutdown()
    out["idle_after_background_top_up"] = idle(pool)
    mlruntime.shutdown()
    print("RESULT " + json.dumps(out))
    """
)


def _run_on_a_fresh_ray(tmp_path: Path, script: str, probe: str, timeout: float) -> Any:
    """Run ``script`` (it starts its own embedded Ray) in a fresh process, with ``probe`` as
    the importable module ``warm_probe``, and return what its ``RESULT`` line holds (JSON)."""
    (tmp_path / "warm_probe.py").write_text(probe)
    path = tmp_path / "driver_script.py"
    path.write_text(script)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]).strip(
        os.pathsep
    )
    env["MLRUNTIME_HOME"] = str(tmp_path / "home")
    env.pop("MLRUNTIME_ADDRESS", None)
    env.pop("RAY_ADDRESS", None)
    return json.loads(run_for_result([sys.executable, str(path)], env, timeout))


@pytest.mark.timeout(240)
def test_workers_start_warm_with_preloaded_modules_and_the_pool_is_topped_up(
    tmp_path: Path,
) -> None:
    probe = "import time\nIMPORTED_AT = time.time()\n"
    out = _run_on_a_fresh_ray(tmp_path, _SCRIPT, probe, 220)

    assert "ray start" in out["cluster_refused"]  # preload is for the Ray mlruntime starts
    # the driver's serialization context is built after init, before the first job needs it
    assert out["serialization_ready"]
    # init leaves one idle worker per CPU for this job, and a spare; a 2-worker placement
    # group's actors start on them (its job state on the spare), and the module was imported
    # there before the job was even asked for
    pool = out["pool"]
    assert len(out["idle_at_start"]) == pool
    assert set(out["first_pids"]) <= set(out["idle_at_start"])
    assert out["imported_before_asked"]
    # Ray does not replace them when the actors end (at most a process it started meanwhile
    # stays idle); the top-up fills the pool again, once, and to no more than the pool
    assert len(out["idle_after_shutdown"]) + out["started"] >= pool
    assert len(out["idle_after_top_up"]) == pool
    assert out["again"] == {}
    assert set(out["second_pids"]) <= set(out["idle_after_top_up"])
    # a group's shutdown tops the pool up by itself (in the background)
    assert len(out["idle_after_background_top_up"]) == pool
    assert not set(out["idle_after_background_top_up"]) & set(out["second_pids"])


_TRIAL_IMPORTS_SCRIPT = textwrap.dedent(
    """
    import json
    import mlruntime
    from mlruntime.testing import wait_for_idle_workers

    # what a Ray Tune preload adds (TRIAL_IMPORTS), then the probe, which sees what it did
    mlruntime.init(num_cpus=1, preload=["mlruntime.tune._warm", "warm_probe"])
    import ray

    @ray.remote
    def probe():
        import warm_probe
        return warm_probe.SERIALIZATION_READY

    wait_for_idle_workers(1)
    print("RESULT " + json.dumps(ray.get(probe.remote())))
    mlruntime.shutdown()
    """
)


@pytest.mark.timeout(180)
def test_the_trial_imports_build_a_workers_serialization_context_while_it_waits(
    tmp_path: Path,
) -> None:
    """Ray builds a process's serialization context when it first reads an object reference
    (a Ray Tune trial actor's class holds one): 3 ms of a run's first trials, unless the idle
    worker built it while it waited."""
    probe = (
        "from ray._private.worker import global_worker\n"
        "SERIALIZATION_READY = bool(global_worker.serialization_context_map)\n"
    )
    assert _run_on_a_fresh_ray(tmp_path, _TRIAL_IMPORTS_SCRIPT, probe, 160) is True
