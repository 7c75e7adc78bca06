"""Snowflake's published examples, ported by changing imports only, run on mlruntime.

Each ``tests/ports/<name>.py`` is one example as Snowflake published it; its docstring names the
source and every difference (imports; the device where a GPU is named). The harness stands in
for each example's data-preparation step (the quickstarts load a CSV from S3 with ``COPY INTO``,
the multi-node guide generates a table with Snowflake SQL): it creates the same tables in the
warehouse of a fresh ``MLRUNTIME_HOME``, then runs the example in a new process. The table
names are the originals', three-part names included (a DuckDB catalog ``CR_QUICKSTART`` with a
schema ``PUBLIC`` stands for Snowflake's database and schema).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

VEHICLE = """
session.sql("ATTACH ':memory:' AS CR_QUICKSTART")
session.sql("CREATE SCHEMA CR_QUICKSTART.PUBLIC")
session.sql('''
    CREATE TABLE CR_QUICKSTART.PUBLIC.VEHICLE AS
    SELECT (i % 97)::BIGINT AS C1,
           TIMESTAMP '2024-01-01' + to_seconds(i) AS C2,
           (i % 13)::BIGINT AS C3, (i % 7)::BIGINT AS C4,
           round(((i * 7919) % 1000) / 10.0, 2)::DOUBLE AS C5,
           ((i % 13) * 3 + (i % 7) * 2 + ((i * 7919) % 1000) / 100)::BIGINT AS C6,
           (i % 5)::BIGINT AS C7, (i % 11)::BIGINT AS C8, (i % 3)::BIGINT AS C9
    FROM range(6000) t(i)
''')
"""

MULTINODE = """
cols = ", ".join(f"random() * 10 AS FT_{i}" for i in range(1, 10))
session.sql(f"CREATE TABLE MULTINODE_SAMPLE_TRAIN_DS AS SELECT {cols} FROM range(10000)")
session.sql("ALTER TABLE MULTINODE_SAMPLE_TRAIN_DS ADD COLUMN TARGET DOUBLE")
session.sql("UPDATE MULTINODE_SAMPLE_TRAIN_DS SET TARGET = FT_1 + FT_2")
"""


def predictions(output: str, prefix: str) -> list[float]:
    """The numbers of the numpy array printed after ``prefix`` (it may wrap over lines)."""
    text = output[output.index(prefix) + len(prefix) :]
    return [float(v) for v in text[text.index("[") + 1 : text.index("]")].split()]


@pytest.mark.timeout(600)
def test_multinode_xgboost_with_ray_data_ingester(
    tmp_path: Path, run_port: Callable[..., str]
) -> None:
    run_port("xgboost_multinode_ray_ingester", MULTINODE, tmp_path)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["xgboost_on_gpu", "lightgbm_on_gpu"])
def test_gbdt_on_gpu_quickstarts(tmp_path: Path, run_port: Callable[..., str], name: str) -> None:
    out = run_port(name, VEHICLE, tmp_path)
    assert "Training set size: 5400 rows" in out
    ours = predictions(out, "Snowflake Container Runtime predictions:")
    oss = predictions(out, "Sample predictions:")
    assert len(ours) == len(oss) == 10
    # both models learn the same target from the same columns: predictions of similar scale
    assert 0.2 < (sum(ours) / len(ours)) / (sum(oss) / len(oss)) < 5


@pytest.mark.timeout(600)
def test_pytorch_on_gpu_quickstart(tmp_path: Path, run_port: Callable[..., str]) -> None:
    out = run_port("pytorch_on_gpu", VEHICLE, tmp_path)
    assert "Epoch [10/10]" in out and "Training finished" in out


@pytest.mark.timeout(600)
def test_dataset_guide(tmp_path: Path, run_port: Callable[..., str]) -> None:
    out = run_port("dataset_guide", "", tmp_path)
    lines = out.splitlines()
    assert "DatasetVersion(dataset='my_dataset', version='version1')" in lines
    assert "['version1', 'version2']" in lines
    assert lines.count("version1") == 2 and lines.count("version2") == 2


@pytest.mark.timeout(600)
def test_hpo_example(
    tmp_path: Path, run_port: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the sample indexes the columns create_dataframe made from pandas as '"target"'
    monkeypatch.setenv("MLRUNTIME_SNOWFLAKE_IDENTIFIERS", "1")
    out = run_port("hpo_example", "", tmp_path)
    # the progress lines of the three runs: 3 Bayes trials, 3 random, the 2 x 2 x 2 grid
    done = [ln for ln in out.splitlines() if ln.startswith("tuning:") and "done of" in ln]
    assert any("3 trial(s) done of 3" in ln for ln in done)
    assert any("8 trial(s) done of 8" in ln for ln in done)
    best = [float(ln.rsplit(" ", 1)[1]) for ln in done if "best accuracy" in ln]
    assert max(best) > 0.9  # xgboost on digits


# The guide's MNIST_60K table: base64-encoded 28 x 28 grey PNGs and their digit. Each image is
# its label's pattern (a bar whose position is the digit) plus noise, so the net can learn it.
MNIST = """
import base64, io
import numpy as np
import pandas as pd
from PIL import Image
rng = np.random.default_rng(0)
images, labels = [], []
for i in range(640):
    label = i % 10
    pixels = rng.integers(0, 60, (28, 28), dtype=np.uint8)
    pixels[2 + 2 * label : 4 + 2 * label, 4:24] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    images.append(base64.b64encode(buffer.getvalue()).decode())
    labels.append(label)
session.write_pandas(
    pd.DataFrame({"IMAGE": images, "LABEL": labels}), "MNIST_60K", auto_create_table=True
)
from mlruntime.testing import simulated_cluster
two_nodes = simulated_cluster([(1, 0), (1, 0)])  # kept open while the port runs
cluster = two_nodes.__enter__()
"""


def _torchvision_importable() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.timeout(600)
def test_pytorch_multinode_guide(
    tmp_path: Path, run_port: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _torchvision_importable():
        # the driver and every Ray worker it starts inherit this path (see _stand_ins/)
        stand_ins = str(Path(__file__).parent / "_stand_ins")
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [stand_ins, os.environ.get("PYTHONPATH")]))
        )
    out = run_port(
        "pytorch_multinode_guide",
        MNIST,
        tmp_path,
        after=(
            "import json; print('METRICS', json.dumps(globals_['results'].get_metrics()))\n"
            "two_nodes.__exit__(None, None, None)"
        ),
    )
    # two workers on two nodes, each trained on its shard and tested on the whole test set
    assert "world_size: 2" in out
    metrics = json.loads(out.split("METRICS ", 1)[1].splitlines()[0])
    assert "train_func_train_time" in metrics and metrics["test_images"] > 0
    assert metrics["test_accuracy"] > 0.5


SUPPLY_CHAIN = """
session.sql("ATTACH ':memory:' AS MY_DATABASE")
session.sql("CREATE SCHEMA MY_DATABASE.MY_SCHEMA")
"""


@pytest.mark.timeout(600)
def test_dpf_example(tmp_path: Path, run_port: Callable[..., str]) -> None:
    out = run_port("dpf_example", SUPPLY_CHAIN, tmp_path)
    assert "Job completed with status: RunStatus.SUCCESS" in out
    assert "DONE: 5 partitions" in out
    assert "TOTAL: cost=" in out and "Restored run status: RunStatus.SUCCESS" in out
    # each region's 10 warehouses get their 2,500 units, in both modes
    assert out.count("[NA_WEST] Optimal cost") >= 1
    assert "Stage mode completed with status: RunStatus.SUCCESS" in out


@pytest.mark.timeout(600)
def test_mmt_example(tmp_path: Path, run_port: Callable[..., str]) -> None:
    out = run_port("mmt_example", "", tmp_path)
    assert "Training MSE" in out
    assert "AttributeError" in out and "fitss" in out  # the failed partition's traceback
    assert "RunStatus.FAILURE" in out or "RunStatus.CANCELLED" in out
