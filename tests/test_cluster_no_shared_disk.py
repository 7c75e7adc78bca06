"""Jobs on a real Ray cluster whose nodes share no filesystem, with storage on S3.

The cluster is started with ``ray start`` (token auth): a head at 127.0.0.2 that hosts no
workers (like a cluster's coordinator), and two worker nodes at 127.0.0.3 and 127.0.0.4, each in
its own mount namespace with empty tmpfs mounts over the session's temporary folders and the
default MLRUNTIME_HOME, so they cannot see the driver's files (its MLRUNTIME_HOME, the test's
tmp_path); they share only the installed code. S3 is a moto server on loopback. Each test runs its
driver in a subprocess connected to that cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlruntime.testing import run_for_result

RAY = Path(sys.executable).parent / "ray"
HEAD_IP, NODE_IPS = "127.0.0.2", ("127.0.0.3", "127.0.0.4")

pytestmark = pytest.mark.skipif(
    sys.platform != "linux"
    or os.geteuid() != 0
    or shutil.which("unshare") is None
    or shutil.which("ip") is None,
    reason="needs Linux, root, unshare(1) (a mount namespace per node) and ip(8)",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def generate_token(env: dict[str, str], home: Path) -> str:
    """A new token from ``ray get-auth-token --generate``, run with ``HOME=home`` so the real
    user's ``~/.ray/auth_token`` is neither read nor written; the file it leaves there is
    removed (drivers and nodes get the token only where they are told)."""
    home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(RAY), "get-auth-token", "--generate"],
        env={**env, "HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    (home / ".ray" / "auth_token").unlink(missing_ok=True)
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from moto.server import ThreadedMotoServer

    s3_port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port)
    moto.start()
    tag = f"/tmp/mlrt-cluster-{uuid.uuid4().hex[:8]}"  # in every process's command line
    # What the nodes must not see: every tmp_path of this session (the drivers' homes and
    # files) and the default MLRUNTIME_HOME; each node mounts an empty tmpfs over them.
    hidden = [tmp_path_factory.getbasetemp(), Path.home() / ".mlruntime"]
    for folder in hidden:
        folder.mkdir(parents=True, exist_ok=True)
    mounts = " && ".join(f"mount -t tmpfs tmpfs {folder}" for folder in hidden)
    # The nodes and drivers get none of this process's Ray settings (a session Ray of other
    # tests may have set some), only what a cluster operator would set.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLRUNTIME_QUIET": "1",
    }
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_TOKEN"] = generate_token(env, tmp_path_factory.mktemp("token-home"))
    port = _free_port()
    # Give the nodes' addresses to the loopback interface, as a real node's address is on one
    # of its interfaces: LightGBM finds its own rank in the machine list by its interfaces'
    # addresses (127.0.0.3 routes over lo without this, but is not listed on it).
    added = []
    for ip in NODE_IPS:
        done = subprocess.run(
            ["ip", "addr", "add", f"{ip}/32", "dev", "lo"], capture_output=True, check=False
        )
        if done.returncode == 0:
            added.append(ip)
    try:
        subprocess.run(
            [
                str(RAY),
                "start",
                "--head",
                f"--node-ip-address={HEAD_IP}",
                f"--port={port}",
                "--num-cpus=0",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={tag}/head",
                f"--ray-client-server-port={_free_port()}",
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        for ip in NODE_IPS:
            start = (
                f"{mounts} && exec {RAY} start "
                f"--address={HEAD_IP}:{port} --node-ip-address={ip} --num-cpus=1 "
                f"--disable-usage-stats --temp-dir={tag}/{ip}"
            )
            subprocess.run(
                ["unshare", "-m", "bash", "-c", start],
                env=env,
                check=True,
                capture_output=True,
                timeout=120,
            )
        import boto3

        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="jobs")
        yield {**env, "MLRUNTIME_TEST_ADDRESS": f"{HEAD_IP}:{port}"}
    finally:
        subprocess.run(["pkill", "-9", "-f", tag], check=False)
        shutil.rmtree(tag, ignore_errors=True)
        for ip in added:
            subprocess.run(["ip", "addr", "del", f"{ip}/32", "dev", "lo"], check=False)
        moto.stop()


PRELUDE = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import numpy as np
    import pyarrow as pa, pyarrow.parquet as pq
    import mlruntime
    from mlruntime import DataConnector, Distributor, FailureConfig, ScalingConfig
    from mlruntime import ShardedDataConnector
    from mlruntime import WorkerResourceConfig, get_context
    from mlruntime.errors import ConfigError

    mlruntime.init(os.environ["MLRUNTIME_TEST_ADDRESS"], _node_ip_address="127.0.0.2")
    TWO = ScalingConfig(num_workers=2, resources_per_worker=WorkerResourceConfig(num_cpus=1))

    def write_s3_parquet(prefix, rows=4000, files=4):
        per = rows // files
        rng = np.random.default_rng(0)
        for i in range(files):
            ids = np.arange(i * per, (i + 1) * per)
            x = rng.random((per, 3)).astype(np.float32)
            table = pa.table({"id": ids, "a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                              "y": x @ np.array([1.0, 2.0, -1.0], dtype=np.float32)})
            pq.write_table(table, f"{prefix}/part-{i}.parquet")
        return rows

    def emit(**result):
        print("RESULT" + json.dumps(result), flush=True)

    def read_shard():
        ctx = get_context()
        ids = [int(i) for b in ctx.get_dataset_map()["data"].to_batches(500, False)
               for i in b["id"]]
        return {"node": ctx.rank_info.node_ip, "ids": ids}
    """
)


def _drive(cluster: dict[str, str], tmp_path: Path, body: str) -> dict[str, object]:
    script = tmp_path / "driver.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    env = {**cluster, "MLRUNTIME_HOME": str(tmp_path / "home")}  # driver-local: nodes can't see
    return dict(json.loads(run_for_result([sys.executable, str(script)], env, 400, tail=4000)))


def test_local_storage_fails_fast_with_a_clear_error(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    result = _drive(
        cluster,
        tmp_path,
        """
        try:
            Distributor(TWO, verbose=False).run(lambda: 1)
            emit(error=None)
        except ConfigError as exc:
            emit(error=str(exc))
        """,
    )
    error = str(result["error"])
    assert "storage" in error and "MLRUNTIME_STORAGE" in error
    assert "127.0.0.3" in error and "127.0.0.4" in error


def test_s3_data_is_read_by_ranks_on_both_nodes_every_row_once(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    result = _drive(
        cluster,
        tmp_path,
        """
        mlruntime.init(storage="s3://jobs/read-test")
        rows = write_s3_parquet("s3://jobs/data-read")

        out = Distributor(TWO, verbose=False).run(
            read_shard, dataset_map={"data": ShardedDataConnector.from_sources("s3://jobs/data-read")}
        ).return_values
        emit(rows=rows, nodes=[o["node"] for o in out], ids=[i for o in out for i in o["ids"]])
        """,
    )
    assert sorted(result["nodes"]) == list(NODE_IPS)  # type: ignore[arg-type]
    assert sorted(result["ids"]) == list(range(int(result["rows"])))  # type: ignore[arg-type]


def test_a_dataset_the_driver_creates_on_s3_is_read_by_ranks_on_both_nodes(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    result = _drive(
        cluster,
        tmp_path,
        """
        import pandas as pd

        mlruntime.init(storage="s3://jobs/datasets-test")
        frame = pd.DataFrame({"id": np.arange(3000), "x": np.arange(3000) * 0.5})
        ds = mlruntime.create_from_dataframe("trips", "v1", frame)

        out = Distributor(TWO, verbose=False).run(
            read_shard, dataset_map={"data": ShardedDataConnector.from_dataset("trips", "v1")}
        ).return_values
        ds.verify()
        emit(path=ds.path, versions=mlruntime.list_versions("trips"),
             nodes=[o["node"] for o in out], ids=[i for o in out for i in o["ids"]])
        """,
    )
    assert str(result["path"]) == "s3://jobs/datasets-test/datasets/trips/v1"
    assert result["versions"] == ["v1"]
    assert sorted(result["nodes"]) == list(NODE_IPS)  # type: ignore[arg-type]
    assert sorted(result["ids"]) == list(range(3000))  # type: ignore[arg-type]


def test_xgboost_trains_across_both_nodes_from_s3(cluster: dict[str, str], tmp_path: Path) -> None:
    result = _drive(
        cluster,
        tmp_path,
        """
        from mlruntime_xgboost import XGBEstimator, XGBScalingConfig

        mlruntime.init(storage="s3://jobs/xgb")
        write_s3_parquet("s3://jobs/data-xgb")
        est = XGBEstimator(n_estimators=15, params={"max_depth": 3},
                           scaling_config=XGBScalingConfig(2, 1), verbose=False)
        est.fit(DataConnector.from_sources("s3://jobs/data-xgb"), ["a", "b", "c"], "y")
        rmse = est.get_eval_results()["train"]["rmse"]
        emit(rounds=est.get_booster().num_boosted_rounds(), first=rmse[0], last=rmse[-1],
             ranks=len(est.last_result.return_values),
             model_dir=est.last_result.get_model_dir())
        """,
    )
    assert result["rounds"] == 15 and result["ranks"] == 2
    assert float(result["last"]) < 0.5 * float(result["first"])  # type: ignore[arg-type]
    assert str(result["model_dir"]).startswith("s3://jobs/xgb/runs/")


def test_the_nodes_idle_workers_are_topped_up_after_a_job_and_the_next_job_starts_on_them(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    result = _drive(
        cluster,
        tmp_path,
        """
        from mlruntime.runtime.distributor import release_idle_groups
        from mlruntime.runtime.warm import SPARE_WORKERS, idle_workers, top_up_idle_workers

        def where():
            return {"node": get_context().rank_info.node_id, "pid": os.getpid()}

        mlruntime.init(storage="s3://jobs/warm")
        workers = {n.node_id: n.address for n in mlruntime.get_nodes() if n.num_cpus}
        pool = {n.node_id: int(n.num_cpus) + SPARE_WORKERS for n in mlruntime.get_nodes()}
        import ray

        driver_node = ray.get_runtime_context().get_node_id()
        first = Distributor(TWO, verbose=False).run(where).return_values
        # the group's actors end; the nodes are asked for idle workers in their place (in the
        # background, over the raylets' gRPC, with the cluster's token)
        release_idle_groups()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            idle = idle_workers()
            # the workers' nodes, and the driver's node (the job state's)
            if all(len(idle.get(node, [])) >= pool[node] for node in workers) and len(
                idle.get(driver_node, [])
            ) >= pool[driver_node]:
                break
            time.sleep(0.1)
        again = top_up_idle_workers(wait=True)  # full already: starts nothing
        second = Distributor(TWO, verbose=False).run(where).return_values
        emit(first=first, idle=idle, again=again, second=second, workers=workers, pool=pool)
        """,
    )
    workers = dict(result["workers"])  # type: ignore[call-overload]
    assert sorted(workers.values()) == list(NODE_IPS)
    idle = dict(result["idle"])  # type: ignore[call-overload]
    # one CPU each: one idle worker on each worker node and the spare
    pool = dict(result["pool"])  # type: ignore[call-overload]
    assert all(len(idle[node]) == pool[node] == 2 for node in workers)
    assert result["again"] == {}
    second = list(result["second"])  # type: ignore[call-overload]
    assert sorted(rank["node"] for rank in second) == sorted(workers)
    for rank in second:  # the next job's workers are the processes the top-up started
        assert rank["pid"] in idle[rank["node"]]
    first_pids = {rank["pid"] for rank in result["first"]}  # type: ignore[union-attr]
    assert not first_pids & {rank["pid"] for rank in second}


def test_killed_worker_resumes_from_a_checkpoint_the_remote_node_wrote(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    result = _drive(
        cluster,
        tmp_path,
        """
        mlruntime.init(storage="s3://jobs/resume")

        def train():
            ctx = get_context()
            start = ctx.get_checkpoint().to_dict()["step"] + 1 if ctx.get_checkpoint() else 0
            for step in range(start, 6):
                ctx.report({"step": step, "node": ctx.rank_info.node_ip},
                           checkpoint=mlruntime.Checkpoint.from_dict({"step": step}))
                if step == 3 and ctx.get_attempt() == 0 and ctx.get_rank() == 0:
                    os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies
            return start

        result = Distributor(TWO, FailureConfig(max_failures=1), verbose=False).run(train)
        emit(starts=result.return_values, attempts=len(result.attempts),
             location=result.get_checkpoint_location(),
             last=result.get_checkpoint().to_dict(), writer=result.get_metrics()["node"])
        """,
    )
    assert result["attempts"] == 1
    assert result["starts"] == [4, 4]  # resumed after the checkpoint of step 3
    assert str(result["location"]).startswith("s3://jobs/resume/runs/")
    assert result["last"] == {"step": 5}
    assert result["writer"] in NODE_IPS  # rank 0 ran, and stored its checkpoints, remotely


def test_pytorch_ddp_across_both_nodes(cluster: dict[str, str], tmp_path: Path) -> None:
    result = _drive(
        cluster,
        tmp_path,
        """
        from mlruntime_pytorch import PyTorchDistributor, PyTorchScalingConfig

        mlruntime.init(storage="s3://jobs/torch")
        write_s3_parquet("s3://jobs/data-torch")

        def train():
            import torch
            import torch.distributed as dist
            ctx = get_context()
            data = ctx.get_dataset_map()["data"].to_torch_dataset(
                batch_size=256, drop_last_batch=False
            )
            rows = sum(len(b["id"]) for b in data)
            total = torch.tensor([rows])
            dist.all_reduce(total)
            return {"node": ctx.rank_info.node_ip, "rows": rows, "total": int(total)}

        scaling = PyTorchScalingConfig(2, 1, WorkerResourceConfig(num_cpus=1, num_gpus=0))
        out = PyTorchDistributor(train, scaling, verbose=False).run(
            dataset_map={"data": ShardedDataConnector.from_sources("s3://jobs/data-torch")}
        ).return_values
        emit(out=out)
        """,
    )
    out = result["out"]
    assert sorted(o["node"] for o in out) == list(NODE_IPS)  # type: ignore[union-attr]
    assert {o["total"] for o in out} == {4000}  # type: ignore[union-attr]


def test_lightgbm_trains_across_both_nodes_from_s3(cluster: dict[str, str], tmp_path: Path) -> None:
    result = _drive(
        cluster,
        tmp_path,
        """
        from mlruntime_lightgbm import LightGBMEstimator, LightGBMScalingConfig

        mlruntime.init(storage="s3://jobs/lgbm")
        write_s3_parquet("s3://jobs/data-lgbm")
        est = LightGBMEstimator(n_estimators=15, params={"num_leaves": 7},
                                scaling_config=LightGBMScalingConfig(2, 1), verbose=False)
        est.fit(DataConnector.from_sources("s3://jobs/data-lgbm"), ["a", "b", "c"], "y")
        l2 = est.get_eval_results()["train"]["l2"]
        emit(first=l2[0], last=l2[-1], ranks=len(est.last_result.return_values))
        """,
    )
    assert result["ranks"] == 2
    assert float(result["last"]) < 0.5 * float(result["first"])  # type: ignore[arg-type]


def test_tensorflow_multi_worker_across_both_nodes(cluster: dict[str, str], tmp_path: Path) -> None:
    result = _drive(
        cluster,
        tmp_path,
        """
        from mlruntime_tensorflow import TensorFlowDistributor, TFScalingConfig

        mlruntime.init(storage="s3://jobs/tf")
        write_s3_parquet("s3://jobs/data-tf")

        def train():
            import tensorflow as tf
            ctx = get_context()
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            rows = ctx.get_dataset_map()["data"].count_rows()
            total = strategy.reduce(
                tf.distribute.ReduceOp.SUM,
                strategy.run(lambda: tf.constant(float(rows))),
                axis=None,
            )
            return {"node": ctx.rank_info.node_ip, "total": float(total),
                    "cluster": json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"]}

        scaling = TFScalingConfig(2, 1, WorkerResourceConfig(num_cpus=1, num_gpus=0))
        out = TensorFlowDistributor(train, scaling, verbose=False).run(
            dataset_map={"data": ShardedDataConnector.from_sources("s3://jobs/data-tf")}
        ).return_values
        emit(out=out)
        """,
    )
    out = result["out"]
    assert sorted(o["node"] for o in out) == list(NODE_IPS)  # type: ignore[union-attr]
    assert {o["total"] for o in out} == {4000.0}  # type: ignore[union-attr]
    workers = out[0]["cluster"]  # type: ignore[index]
    assert sorted(w.split(":")[0] for w in workers) == list(NODE_IPS)


def test_sinks_written_by_ranks_on_both_nodes_are_staged_on_s3(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    result = _drive(
        cluster,
        tmp_path,
        """
        import pyarrow.fs as pafs
        from mlruntime import DatasetSink, ParquetSink
        from mlruntime.train.inference import predict_on_workers

        mlruntime.init(storage="s3://jobs/sink-test")
        rows = write_s3_parquet("s3://jobs/data-sink")
        data = DataConnector.from_sources("s3://jobs/data-sink")

        def predict(table):  # runs on the workers: 2*a, and the node that scored the row
            node = float(get_context().rank_info.node_ip.rsplit(".", 1)[1])
            a = table.column("a").to_numpy()
            return np.stack([2 * a, np.full(len(a), node)], axis=1)

        def touch_and_predict(table):  # leaves a mark on S3 if a worker ever runs it
            pq.write_table(table, f"s3://jobs/sink-touched/{os.getpid()}.parquet")
            return predict(table)

        def scored(table):
            pred = table.column("prediction").combine_chunks().flatten().to_numpy()
            return table.column("id").to_pylist(), pred.reshape(-1, 2)

        def check(table):
            order = np.argsort(table.column("id").to_numpy())
            ids, pred = scored(table.take(pa.array(order)))
            a = pq.read_table("s3://jobs/data-sink").sort_by("id").column("a").to_numpy()
            return {"ids": ids, "nodes": sorted({int(n) for n in pred[:, 1]}),
                    "right": bool(np.allclose(pred[:, 0], 2 * a))}

        folder = predict_on_workers(predict, data, ParquetSink("s3://jobs/sink-out"),
                                    ["a", "b", "c"], key_cols=["id"], scaling_config=TWO,
                                    verbose=False)
        fs = pafs.FileSystem.from_uri("s3://jobs")[0]
        out_parts = [i.base_name for i in fs.get_file_info(pafs.FileSelector("jobs/sink-out"))]
        ds = predict_on_workers(predict, data, DatasetSink("preds", "v1"), ["a", "b", "c"],
                                key_cols=["id"], scaling_config=TWO, verbose=False)
        ds.verify()

        local = os.path.join(os.environ["MLRUNTIME_HOME"], "local-out")
        try:
            predict_on_workers(touch_and_predict, data, ParquetSink(local), ["a", "b", "c"],
                               key_cols=["id"], scaling_config=TWO, verbose=False)
            error = None
        except ConfigError as exc:
            error = str(exc)
        everything = [i.path for i in fs.get_file_info(pafs.FileSelector("jobs", recursive=True))
                      if i.type == pafs.FileType.File]
        emit(rows=rows, folder=folder, out_parts=sorted(out_parts),
             parquet=check(pq.read_table("s3://jobs/sink-out")),
             dataset=check(DataConnector.from_dataset("preds", "v1").to_arrow()),
             dataset_files=[f.rsplit("/", 1)[1] for f in ds.files], dataset_rows=ds.num_rows,
             error=error, local_exists=os.path.exists(local),
             driver_home=sorted(os.listdir(os.environ["MLRUNTIME_HOME"])),
             staging=[p for p in everything if ".mlruntime-staging" in p or "/staging/" in p],
             touched=[p for p in everything if "sink-touched" in p],
             version_folder=sorted(p.rsplit("/", 1)[1] for p in everything
                                   if p.startswith("jobs/sink-test/datasets/preds/v1/")))
        """,
    )
    rows = int(result["rows"])  # type: ignore[arg-type]
    nodes = sorted(int(ip.rsplit(".", 1)[1]) for ip in NODE_IPS)
    assert result["folder"] == "s3://jobs/sink-out"
    for written in (result["parquet"], result["dataset"]):
        assert written["ids"] == list(range(rows))  # type: ignore[index]  # every row once
        assert written["nodes"] == nodes  # type: ignore[index]  # scored on both nodes
        assert written["right"] is True  # type: ignore[index]
    out_parts = result["out_parts"]
    assert len(out_parts) == 2  # type: ignore[arg-type]  # one part per rank, moved in
    assert [p[:10] for p in out_parts] == ["part-00000", "part-00001"]  # type: ignore[union-attr]
    assert result["dataset_rows"] == rows
    assert len(result["dataset_files"]) == 2  # type: ignore[arg-type]
    assert result["version_folder"] == sorted([*result["dataset_files"], "manifest.json"])  # type: ignore[misc]
    assert result["staging"] == []  # no staging objects left in the bucket
    error = str(result["error"])
    assert result["error"] is not None and "storage" in error and "MLRUNTIME_STORAGE" in error
    assert "ParquetSink" in error and "127.0.0.3" in error and "127.0.0.4" in error
    assert result["touched"] == []  # no worker ran
    assert result["local_exists"] is False
    assert not [n for n in result["driver_home"] if ".mlruntime-staging" in n]  # type: ignore[union-attr]


def test_frames_and_warehouse_tables_are_staged_and_read_on_both_nodes(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    result = _drive(
        cluster,
        tmp_path,
        """
        import pandas as pd
        from mlruntime import Session

        mlruntime.init(storage="s3://jobs/staged")
        # The warehouse file and the frame are on the driver only; the nodes cannot see them.
        session = Session()
        session.create_table("t", {"id": np.arange(3000), "x": np.arange(3000) * 0.5})
        frame = pd.DataFrame({"id": np.arange(2000)})
        out = {}
        for mode in ("objects", "parquet"):
            os.environ["MLRUNTIME_STAGE"] = mode
            for name, data in (("table", session.table("t")), ("frame", frame)):
                ranks = Distributor(TWO, verbose=False).run(
                    read_shard, dataset_map={"data": ShardedDataConnector.from_dataframe(data)}
                ).return_values
                out[f"{mode}-{name}"] = {
                    "nodes": sorted(r["node"] for r in ranks),
                    "ids": sorted(i for r in ranks for i in r["ids"]),
                }
        import boto3
        s3 = boto3.client("s3")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="jobs", Prefix="staged/").get(
            "Contents", [])]
        emit(out=out, inputs=[k for k in keys if "/inputs/" in k and not k.endswith("/")])
        """,
    )
    out = result["out"]
    for key, expected in (("table", 3000), ("frame", 2000)):
        for mode in ("objects", "parquet"):
            got = out[f"{mode}-{key}"]  # type: ignore[index]
            assert got["nodes"] == list(NODE_IPS), (mode, key)
            assert got["ids"] == list(range(expected)), (mode, key)
    assert result["inputs"] == []  # staged Parquet files removed after each job
