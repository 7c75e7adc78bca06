"""Snowflake's "Load and write data" guide (``data_connector_guide.py``), run on mlruntime.

The harness stands in for the tables the guide assumes exist: ``"example-table-name"`` (a few
rows of anything) and ``TRAINING_TABLE`` (``FEATURE1``, ``FEATURE2`` doubles, ``TARGET`` 0/1 =
``FEATURE1 > FEATURE2``, 2000 rows). It makes them in the warehouse of a fresh
``MLRUNTIME_HOME``, runs the port in a new process, then prints one line of facts read from the
port's globals (``runpy.run_path`` returns them), which the test asserts on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

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


@pytest.mark.timeout(600)
def test_load_data_guide(tmp_path: Path, run_port: Callable[..., str]) -> None:
    out = run_port("data_connector_guide", TABLES, tmp_path, after=FACTS)

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
