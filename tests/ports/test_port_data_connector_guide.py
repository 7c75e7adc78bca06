"""Snowflake's "Load and write data" guide (``data_connector_guide.py``), run on mlruntime.

The harness stands in for the tables the guide assumes exist: ``"example-table-name"`` (a few
rows of anything) and ``TRAINING_TABLE`` (``FEATURE1``, ``FEATURE2`` doubles, ``TARGET`` 0/1 =
``FEATURE1 > FEATURE2``, 2000 rows). It makes them in the warehouse of a fresh
``MLRUNTIME_HOME``, runs the port in a new process, then prints one line of facts read from the
port's globals (``runpy.run_path`` returns them), which the test asserts on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PORTS = Path(__file__).parent
ROWS = 2000

TABLES = f"""
session.sql('CREATE TABLE "example-table-name" AS SELECT i AS ID, i * 0.5 AS V FROM range(5) t(i)')
session.sql("CREATE TABLE TRAINING_TABLE (FEATURE1 DOUBLE, FEATURE2 DOUBLE, TARGET BIGINT)")
session.sql('''
    INSERT INTO TRAINING_TABLE
    SELECT f1, f2, (f1 > f2)::BIGINT
    FROM (SELECT ((i * 7919) % 1000) / 100.0 AS f1, ((i * 104729) % 997) / 100.0 AS f2
          FROM range({ROWS}) t(i))
''')
"""

FACTS = """
import json
facts = {
    "booster": type(globals_["fit_booster"]).__name__,
    "booster_features": list(globals_["fit_booster"].feature_names or []),
    "clf": type(globals_["clf"]).__name__,
    "clf_classes": [int(c) for c in globals_["clf"].classes_],
    "clf_accuracy": float((globals_["clf"].predict(globals_["pandas_df"][["FEATURE1", "FEATURE2"]])
                           == globals_["pandas_df"]["TARGET"]).mean()),
    "pandas_rows": len(globals_["pandas_df"]),
    "torch_batches": globals_["batch_idx"] + 1,
    "torch_X_shape": list(globals_["X"].shape),
    "torch_y_shape": list(globals_["y"].shape),
    "last_connector": type(globals_["data_connector"]).__name__,
    "last_connector_rows": len(globals_["data_connector"].to_pandas()),
}
print("PORT-FACTS " + json.dumps(facts))
"""


def run_port(name: str, setup: str, after: str, tmp_path: Path) -> str:
    """Run ``tests/ports/<name>.py`` after ``setup`` in a fresh process, then ``after`` (with
    the port's globals as ``globals_``); return the process's output."""
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


@pytest.mark.timeout(600)
def test_load_data_guide(tmp_path: Path) -> None:
    out = run_port("data_connector_guide", TABLES, FACTS, tmp_path)

    # the TensorFlow block printed every batch: dicts of (4,) tensors, the last partial one
    # dropped (2000 rows / 4 = 500 batches)
    tf_batches = [line for line in out.splitlines() if line.startswith("{")]
    assert len(tf_batches) == ROWS // 4, out[-2000:]
    for line in tf_batches[:3]:
        for col in ("FEATURE1", "FEATURE2", "TARGET"):
            assert f"'{col}': <tf.Tensor: shape=(4,)" in line, line

    facts = json.loads(out.split("PORT-FACTS ", 1)[1].splitlines()[0])
    # the XGBEstimator block trained a booster on the two features
    assert facts["booster"] == "Booster"
    assert facts["booster_features"] == ["FEATURE1", "FEATURE2"]
    # the xgboost block's classifier learned TARGET = FEATURE1 > FEATURE2 from to_pandas()
    assert facts["pandas_rows"] == ROWS
    assert facts["clf"] == "XGBClassifier" and facts["clf_classes"] == [0, 1]
    assert facts["clf_accuracy"] > 0.95
    # the torch block: 62 full batches of 32 (drop_last_batch), features stacked as rows
    assert facts["torch_batches"] == ROWS // 32
    assert facts["torch_X_shape"] == [2, 32] and facts["torch_y_shape"] == [32]
    # the file_cache_config block made a working connector (the option is ignored)
    assert facts["last_connector"] == "DataConnector"
    assert facts["last_connector_rows"] == ROWS
