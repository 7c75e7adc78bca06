"""Security across the trainers and against a real ``ray start`` cluster.

- A local job of each trainer (XGBoost, LightGBM, PyTorch, TensorFlow; 2 workers, small data)
  run by a fresh driver process: while it trains, every listening socket of the session's
  processes is on loopback, or (for Ray's servers) refuses calls without the token.
- A head started with ``ray start`` and token authentication (on 127.0.0.2, as
  tests/test_cluster_no_shared_disk.py does): a driver without the token, or with a wrong one,
  gets a ConfigError saying what to set; with the token in a file, a job runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlruntime.runtime import loopback
from mlruntime.testing import load_module_from_path, run_for_result

CLUSTER = load_module_from_path(
    Path(__file__).with_name("test_cluster_no_shared_disk.py"), "cluster_helpers"
)
LOOPBACK_PREFIXES = ("127.", "::ffff:127.", "::1")
TRAINERS = ("xgboost", "lightgbm", "pytorch", "tensorflow")

JOBS = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, pandas as pd
    import mlruntime
    from mlruntime import WorkerResourceConfig

    DRIVER, OUT = os.getpid(), sys.argv[1]

    def snapshot(trainer):
        # On a worker, mid-job: every listener of this session's processes (all descend
        # from the driver), and the GCS address for the test to knock on.
        import psutil, ray
        pids = {DRIVER} | {p.pid for p in psutil.Process(DRIVER).children(recursive=True)}
        rows = sorted({(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name())
                       for c in psutil.net_connections(kind="inet")
                       if c.status == psutil.CONN_LISTEN and c.pid in pids})
        from mlruntime.runtime.security import probe_gcs
        gcs = ray.get_runtime_context().gcs_address
        refused = probe_gcs(gcs)  # a call without the token, while the job runs
        with open(os.path.join(OUT, f"{trainer}-{os.getpid()}.json"), "w") as out:
            json.dump({"listeners": rows, "gcs": gcs, "refused": refused}, out)

    mlruntime.init(num_cpus=4)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.random(1000), "b": rng.random(1000)})
    frame["y"] = 2 * frame.a + frame.b
    two = dict(num_nodes=1, num_workers_per_node=2,
               resource_requirements_per_worker=WorkerResourceConfig(num_cpus=1, num_gpus=0))

    import xgboost as xgb
    from mlruntime_xgboost import XGBEstimator, XGBScalingConfig

    class XGBSnapshot(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, log):
            if epoch == 0:
                snapshot("xgboost")
            return False

    XGBEstimator(n_estimators=2, callbacks=[XGBSnapshot()], verbose=False,
                 scaling_config=XGBScalingConfig(num_workers=2, num_cpu_per_worker=1),
                 ).fit(frame, ["a", "b"], "y")

    from mlruntime_lightgbm import LightGBMEstimator, LightGBMScalingConfig

    def lgb_snapshot(env):
        if env.iteration == 0:
            snapshot("lightgbm")

    LightGBMEstimator(n_estimators=2, callbacks=[lgb_snapshot], verbose=False,
                      scaling_config=LightGBMScalingConfig(num_workers=2, num_cpu_per_worker=1),
                      ).fit(frame, ["a", "b"], "y")

    from mlruntime_pytorch import PyTorchDistributor, PyTorchScalingConfig

    def torch_job():
        import torch, torch.distributed as dist
        dist.barrier()
        snapshot("pytorch")
        dist.barrier()

    PyTorchDistributor(torch_job, PyTorchScalingConfig(**two), verbose=False).run()

    from mlruntime_tensorflow import TensorFlowDistributor, TFScalingConfig

    def tf_job():
        import tensorflow as tf
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
        snapshot("tensorflow")
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)

    TensorFlowDistributor(tf_job, TFScalingConfig(**two), verbose=False).run()
    mlruntime.shutdown()
    print("JOBS DONE", flush=True)
    """
)


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without Ray's settings (the test session's Ray may have set some)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("MLRUNTIME_ADDRESS", None)
    env.update(RAY_USAGE_STATS_ENABLED="0", MLRUNTIME_QUIET="1", **extra)
    return env


@pytest.fixture(scope="module")
def local_jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """What each trainer's workers saw listening mid-job, by trainer (one fresh driver)."""
    folder = tmp_path_factory.mktemp("security-jobs")
    script, out = folder / "jobs.py", folder / "snapshots"
    script.write_text(JOBS)
    out.mkdir()
    done = subprocess.run(
        [sys.executable, str(script), str(out)],
        env=_clean_env(MLRUNTIME_HOME=str(folder / "home")),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0 and "JOBS DONE" in done.stdout, done.stderr[-4000:]
    seen: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*.json")):
        seen.setdefault(path.name.split("-")[0], []).append(json.loads(path.read_text()))
    return seen


UPSTREAM_BINDS_ALL = {
    "xgboost": "XGBoost's collective binds its peer and error sockets to INADDR_ANY, with no "
    "option for the address (src/collective/comm.cc, RabitComm::Bootstrap)",
    "tensorflow": "TensorFlow's gRPC server binds 0.0.0.0:<port> whatever the cluster spec "
    "says (grpc_server_lib.cc, GrpcServer::Init)",
}
"""Frameworks whose listeners only mlruntime's loopback library (runtime/loopback.py) keeps
on loopback; where it cannot be built (no C compiler) they listen on every interface."""


NARROWED = loopback.can_narrow()
"""Whether the library can be built here (Linux with a C compiler)."""


@pytest.mark.parametrize(
    "trainer",
    [
        pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=UPSTREAM_BINDS_ALL[t]))
        if t in UPSTREAM_BINDS_ALL and not NARROWED
        else t
        for t in TRAINERS
    ],
)
def test_a_local_job_listens_only_on_loopback_or_behind_rays_token(
    local_jobs: dict[str, list[dict[str, Any]]], trainer: str
) -> None:
    snapshots = local_jobs.get(trainer, [])
    assert len(snapshots) >= 1, f"no snapshot from a {trainer} worker"
    for snap in snapshots:
        assert snap["listeners"]
        assert snap["refused"] is True  # Ray's GCS wants the token, loopback or not
        exposed = [e for e in snap["listeners"] if not e[0].startswith(LOOPBACK_PREFIXES)]
        assert not exposed, f"{trainer}: listening beyond loopback: {exposed}"


@pytest.fixture(scope="module")
def token_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A ``ray start`` head with token authentication at 127.0.0.2 (2 CPUs), and its token."""
    folder = tmp_path_factory.mktemp("token-head")
    tag = f"/tmp/mlrt-token-head-{uuid.uuid4().hex[:8]}"  # in every process's command line
    home = folder / "user-home"  # so no ~/.ray/auth_token of the real user is read or made
    home.mkdir()
    env = _clean_env(HOME=str(home), RAY_AUTH_MODE="token")
    token = CLUSTER.generate_token(env, home)  # drivers find the token only where told
    port = CLUSTER._free_port()
    try:
        subprocess.run(
            [
                str(CLUSTER.RAY),
                "start",
                "--head",
                f"--node-ip-address={CLUSTER.HEAD_IP}",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={tag}",
                f"--ray-client-server-port={CLUSTER._free_port()}",
            ],
            env={**env, "RAY_AUTH_TOKEN": token},
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield {"address": f"{CLUSTER.HEAD_IP}:{port}", "token": token, "home": str(home)}
    finally:
        subprocess.run(["pkill", "-9", "-f", tag], check=False)
        shutil.rmtree(tag, ignore_errors=True)


CONNECT = textwrap.dedent(
    """
    import json, os, sys
    import mlruntime
    from mlruntime import Distributor, ScalingConfig, WorkerResourceConfig, get_context
    from mlruntime.errors import ConfigError

    address, token = sys.argv[1], sys.argv[2]
    errors = {}
    for case, env in [("missing", {}), ("wrong", {"RAY_AUTH_TOKEN": "0" * 64})]:
        os.environ.update(env)
        try:
            mlruntime.init(address, _node_ip_address="127.0.0.2")
        except ConfigError as exc:
            errors[case] = str(exc)
        os.environ.pop("RAY_AUTH_TOKEN", None)
    token_file = os.path.join(os.environ["HOME"], "cluster-token")
    with open(token_file, "w") as out:
        out.write(token)
    os.chmod(token_file, 0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = token_file
    mlruntime.init(address, _node_ip_address="127.0.0.2")
    one = ScalingConfig(num_workers=1, resources_per_worker=WorkerResourceConfig(num_cpus=1))
    ranks = Distributor(one, verbose=False).run(lambda: get_context().get_rank()).return_values
    print("RESULT" + json.dumps({"errors": errors, "ranks": ranks}), flush=True)
    mlruntime.shutdown()
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="needs 127.0.0.2 on loopback (Linux)")
def test_a_token_cluster_refuses_a_driver_without_its_token_and_runs_a_job_with_it(
    token_head: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "connect.py"
    script.write_text(CONNECT)
    result = json.loads(
        run_for_result(
            [sys.executable, str(script), token_head["address"], token_head["token"]],
            _clean_env(HOME=token_head["home"], MLRUNTIME_HOME=str(tmp_path / "home")),
            300,
        )
    )
    missing, wrong = result["errors"]["missing"], result["errors"]["wrong"]
    assert token_head["address"] in missing and "none was found" in missing
    for hint in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "`ray get-auth-token`"):
        assert hint in missing
    assert "refused the authentication token from the RAY_AUTH_TOKEN environment" in wrong
    assert result["ranks"] == [0]
