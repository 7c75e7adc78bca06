"""The embedded warehouse session and the notebook pattern built on it."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from mlruntime import DataConnector, Session, get_active_session
from mlruntime.errors import ConfigError, DatasetExistsError, QueryError, TableNotFoundError


def test_active_session_lives_under_mlruntime_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLRUNTIME_HOME", str(tmp_path / "home"))
    session = get_active_session()
    assert session.path == str(tmp_path / "home" / "warehouse.duckdb")
    assert get_active_session() is session
    session.close()
    assert get_active_session() is not session  # a closed session is reopened


def test_notebook_pattern_table_to_pandas(tmp_path: Path) -> None:
    session = Session(tmp_path / "w.duckdb")
    session.create_table("trips", pd.DataFrame({"km": [1.5, 2.5, 4.0], "fare": [5, 7, 11]}))
    df = session.table("trips")
    out = DataConnector.from_dataframe(df).to_pandas()
    assert out.to_dict("list") == {"km": [1.5, 2.5, 4.0], "fare": [5, 7, 11]}
    sql = DataConnector.from_sql("SELECT fare FROM trips WHERE km > 2", session=session)
    assert sql.to_pandas()["fare"].tolist() == [7, 11]
    assert session.tables() == ["trips"]


def test_from_sql_uses_the_active_session_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLRUNTIME_HOME", str(tmp_path))
    get_active_session().create_table("t", {"v": [1, 2, 3]}, mode="overwrite")
    assert DataConnector.from_sql("SELECT sum(v) AS s FROM t").to_pandas()["s"][0] == 6


def test_create_table_modes(tmp_path: Path) -> None:
    with Session(tmp_path / "w.duckdb") as session:
        session.create_table("t", {"v": [1]})
        with pytest.raises(DatasetExistsError, match="already exists; pass mode='overwrite'"):
            session.create_table("t", {"v": [2]})
        session.create_table("t", {"v": [2, 3]}, mode="append")
        assert sorted(session.sql("SELECT v FROM t").fetchall()) == [(1,), (2,), (3,)]
        session.create_table("t", {"v": [9]}, mode="overwrite")
        assert session.sql("SELECT v FROM t").fetchall() == [(9,)]
        with pytest.raises(ConfigError, match="mode must be one of"):
            session.create_table("t", {"v": [1]}, mode="replace")


def test_failed_append_leaves_the_table_as_it_was(tmp_path: Path) -> None:
    with Session(tmp_path / "w.duckdb") as session:
        session.create_table("t", {"v": [1, 2]})
        with pytest.raises(QueryError, match="cannot write table 't'"):
            session.create_table("t", {"other": ["x"]}, mode="append")
        assert session.sql("SELECT v FROM t ORDER BY v").fetchall() == [(1,), (2,)]


def test_unknown_table_and_bad_sql(tmp_path: Path) -> None:
    with Session(tmp_path / "w.duckdb") as session:
        session.create_table("known", {"v": [1]})
        with pytest.raises(TableNotFoundError, match=r"table 'ghost' does not exist.*known"):
            session.table("ghost")
        with pytest.raises(QueryError, match="query failed"):
            session.sql("SELEC nonsense")
        with pytest.raises(QueryError, match="empty"):
            DataConnector.from_sql("   ", session=session)
    assert os.path.exists(tmp_path / "w.duckdb")


def test_snowflake_identifiers_quote_names_snowflake_keeps_case_sensitive(tmp_path: Path) -> None:
    frame = pd.DataFrame({"target": [1, 2], "C1": [3, 4], "Mixed Case": [5, 6]})
    quoted = Session(tmp_path / "q.duckdb", snowflake_identifiers=True)
    df = quoted.create_dataframe(frame)
    assert df.columns == ['"target"', "C1", '"Mixed Case"']
    written = quoted.write_pandas(frame, "T", auto_create_table=True)
    assert written.columns == ['"target"', "C1", '"Mixed Case"']
    pandas_out = DataConnector.from_dataframe(written).to_pandas()
    assert pandas_out['"target"'].tolist() == [1, 2]
    # off by default: names as given
    plain = Session(tmp_path / "p.duckdb")
    assert plain.create_dataframe(frame).columns == ["target", "C1", "Mixed Case"]
