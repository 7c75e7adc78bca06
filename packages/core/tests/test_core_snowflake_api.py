"""Snowflake's data API shapes on mlruntime: ``ingestor_class=``, session-first signatures,
``Dataset.read``, ``from_ray_dataset(ray_ds=...)``, ``data_sources``, per-connector options."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlruntime
from mlruntime import DataConnector, RayDataIngester, ShardedDataConnector
from mlruntime.errors import ConfigError
from mlruntime.runtime.ray_data import RayDatasetSource


def frame(rows: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"x": np.arange(rows), "y": np.arange(rows) * 2.0})


def test_every_constructor_takes_ingestor_class_and_snowflake_options(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mlruntime")
    dc = DataConnector.from_dataframe(frame(), ingestor_class=None, file_cache_config={"a": 1})
    assert "file_cache_config" in caplog.text  # accepted, said to have no effect
    assert dc.to_pandas()["x"].tolist() == list(range(10))
    assert [type(s).__name__ for s in dc.data_sources] == ["ArrowSource"]
    with pytest.raises(ConfigError, match=r"mlruntime\.RayDataIngester"):
        DataConnector.from_dataframe(frame(), ingestor_class=dict)
    with pytest.raises(ConfigError, match="ShardedDataConnector"):
        DataConnector.from_dataframe(frame(), equal=True)
    assert DataConnector.from_dataframe(frame(), expand_dims=False).expand_dims is False
    sharded = ShardedDataConnector.from_dataframe(frame(), equal=True, expand_dims=False)
    assert (sharded.equal, sharded.expand_dims) == (True, False)


def test_ray_data_ingester_reads_through_ray_data(ray_cluster: None, tmp_path: Path) -> None:
    session = mlruntime.Session(tmp_path / "w.duckdb")
    session.create_table("t", frame(1000))
    for source in (frame(1000), session.table("t")):
        dc = DataConnector.from_dataframe(source, ingestor_class=RayDataIngester)
        assert isinstance(dc.data_sources[0], RayDatasetSource)
        assert sorted(dc.to_pandas()["x"].tolist()) == list(range(1000))
    sharded = ShardedDataConnector.from_sql(
        "select * from t", session, ingestor_class=RayDataIngester, equal=True
    )
    parts = [sharded.get_shard(r, 3).count_rows() for r in range(3)]
    assert parts == [333, 333, 333]
    again = DataConnector.from_ray_dataset(ray_ds=dc.to_ray_dataset())
    assert again.count_rows() == 1000
    session.close()


def test_session_first_signatures_and_dataset_read() -> None:
    session = mlruntime.get_active_session()
    name = f"snow_{uuid.uuid4().hex[:6]}"
    created = mlruntime.create_from_dataframe(
        session, name, "v1", frame(), label_cols=["y"], shuffle=False
    )
    assert "label_cols=['y']" in created.manifest["origin"]
    ds = mlruntime.load_dataset(session, name, "v1")
    assert ds.selected_version.name == "v1" and ds.selected_version.label_cols == ["y"]
    files = ds.read.files()
    assert files == ds.files and len(files) == 1
    assert ds.read.to_pandas()["x"].tolist() == list(range(10))
    assert DataConnector.from_dataset(ds).count_rows() == 10
    assert DataConnector.from_sources(session, files).count_rows() == 10  # Snowflake's order
    assert DataConnector.from_sources(files).count_rows() == 10  # ours
    assert mlruntime.load_dataset(name, "v1").version == "v1"
    with pytest.raises(ConfigError, match="needs the dataset name"):
        mlruntime.load_dataset(session)
