"""The warehouse DataFrame: Snowpark's names over lazy DuckDB relations, on a real DuckDB."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mlruntime
from mlruntime import DataConnector, Session
from mlruntime.data.inputs import DuckDBSource, source_from_object
from mlruntime.errors import (
    ColumnError,
    ConfigError,
    DatasetExistsError,
    QueryError,
    TableNotFoundError,
)
from mlruntime.store.dataframe import DataFrame
from mlruntime.store.row import Row
from mlruntime.store.sinks import DuckDBTableSink, ParquetSink

ROWS = 10_000


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    with Session(tmp_path / "w.duckdb") as session:
        yield session


@pytest.fixture
def numbers(session: Session) -> DataFrame:
    """Table ``numbers``: ids 0..9,999, ``k = id % 3`` and ``v = id * 0.5``."""
    ids = np.arange(ROWS)
    session.create_table("numbers", {"id": ids, "k": ids % 3, "v": ids * 0.5})
    return session.table("numbers")


def ids_of(df: DataFrame) -> list[int]:
    return sorted(row["id"] for row in df.select("id").collect())


# -- random_split ------------------------------------------------------------------------------


def test_random_split_covers_every_row_once_in_the_weights_proportions(numbers: DataFrame) -> None:
    parts = numbers.random_split([0.7, 0.2, 0.1], seed=42)
    ids = [ids_of(p) for p in parts]
    assert sorted(i for part in ids for i in part) == list(range(ROWS))  # each row exactly once
    for part, weight in zip(ids, (0.7, 0.2, 0.1), strict=True):
        assert abs(len(part) / ROWS - weight) < 0.02
    assert [p.count() for p in parts] == [len(part) for part in ids]
    assert all(p.columns == ["id", "k", "v"] for p in parts)


def test_random_split_is_deterministic_for_a_seed(numbers: DataFrame) -> None:
    first = [ids_of(p) for p in numbers.random_split([0.8, 0.2], seed=7)]
    again = [ids_of(p) for p in numbers.random_split([0.8, 0.2], seed=7)]
    scaled = [ids_of(p) for p in numbers.random_split([8, 2], seed=7)]  # normalized weights
    other = [ids_of(p) for p in numbers.random_split([0.8, 0.2], seed=8)]
    assert first == again == scaled
    assert other != first
    assert len(set(first[1]) & set(other[1])) < 0.5 * len(first[1])  # not a near-copy


def test_random_split_does_not_depend_on_row_order(session: Session, numbers: DataFrame) -> None:
    shuffled = numbers.to_arrow().take(np.random.default_rng(0).permutation(ROWS))
    session.create_table("shuffled", shuffled)
    in_order = [ids_of(p) for p in numbers.random_split([0.5, 0.5], seed=3)]
    reordered = [ids_of(p) for p in session.table("shuffled").random_split([0.5, 0.5], seed=3)]
    assert in_order == reordered


def test_random_split_spreads_identical_rows(session: Session) -> None:
    df = session.create_dataframe([(1, "same")] * 2000, schema=["A", "B"])
    train, test = df.random_split([0.75, 0.25], seed=1)
    assert train.count() + test.count() == 2000
    assert abs(test.count() / 2000 - 0.25) < 0.04


def test_random_split_keeps_rows_with_nulls_and_nested_values(session: Session) -> None:
    df = session.sql(
        "SELECT i, CASE WHEN i % 2 = 0 THEN NULL ELSE i END AS maybe, [i, 2] AS pair, "
        "{'x': i} AS nested, NULL AS nothing FROM range(1000) r(i)"
    )
    parts = df.random_split([0.5, 0.5], seed=2)
    assert sorted(r["i"] for p in parts for r in p.collect()) == list(range(1000))


def test_random_split_without_a_seed_still_partitions(numbers: DataFrame) -> None:
    parts = numbers.random_split([1, 1])
    assert sorted(ids_of(parts[0]) + ids_of(parts[1])) == list(range(ROWS))


@pytest.mark.parametrize("weights", [[], [0.5, 0.0], [-1, 2], ["a"], [float("nan")]])
def test_random_split_rejects_bad_weights(numbers: DataFrame, weights: list[object]) -> None:
    with pytest.raises(ConfigError, match="weights must be positive numbers"):
        numbers.random_split(weights, seed=1)  # type: ignore[arg-type]


def test_random_split_rejects_a_non_integer_seed(numbers: DataFrame) -> None:
    with pytest.raises(ConfigError, match="seed must be an integer"):
        numbers.random_split([0.5, 0.5], seed=1.5)  # type: ignore[arg-type]


# -- reading rows ------------------------------------------------------------------------------


def test_collect_returns_rows_read_by_position_and_name(session: Session) -> None:
    df = session.create_dataframe([(1, "a"), (2, "b")], schema=["ID", "TAG"])
    rows = df.collect()
    assert rows == [(1, "a"), (2, "b")]  # rows are tuples
    assert isinstance(rows[0], Row)
    assert (rows[1][0], rows[1]["TAG"], rows[1].TAG, rows[1]["tag"]) == (2, "b", "b", "b")
    assert rows[0].asDict() == rows[0].as_dict() == {"ID": 1, "TAG": "a"}
    assert repr(rows[0]) == "Row(ID=1, TAG='a')"
    assert pickle.loads(pickle.dumps(rows[0])).TAG == "a"
    with pytest.raises(ColumnError, match="column 'GHOST' is not in the row; columns are ID, TAG"):
        rows[0]["GHOST"]
    with pytest.raises(AttributeError, match="GHOST"):
        _ = rows[0].GHOST


def test_row_can_be_built_as_in_snowpark() -> None:
    assert Row(A=1, B=2)["B"] == 2
    assert Row(1, 2) == (1, 2)
    with pytest.raises(ConfigError, match="not both"):
        Row(1, B=2)


def test_count_first_to_pandas_to_arrow_and_schema(numbers: DataFrame) -> None:
    assert numbers.count() == ROWS
    assert numbers.columns == ["id", "k", "v"]
    assert numbers.schema == pa.schema([("id", pa.int64()), ("k", pa.int64()), ("v", pa.float64())])
    assert numbers.sort("id").first() == (0, 0, 0.0)
    assert numbers.sort("id").first(2) == [(0, 0, 0.0), (1, 1, 0.5)]
    assert numbers.filter("id < 0").first() is None
    assert numbers.filter("id < 3").sort("id").to_pandas()["v"].tolist() == [0.0, 0.5, 1.0]
    assert numbers.to_arrow().num_rows == ROWS
    assert repr(numbers) == "DataFrame(id BIGINT, k BIGINT, v DOUBLE)"


def test_show_prints_the_first_rows(numbers: DataFrame, capsys: pytest.CaptureFixture[str]) -> None:
    numbers.sort("id").show(3)
    out = capsys.readouterr().out
    assert "id" in out and "9999" not in out
    assert len([line for line in out.splitlines() if "│" in line]) == 2 + 3  # header + 3 rows


# -- transformations ---------------------------------------------------------------------------


def test_limit_select_filter_drop_and_sort(numbers: DataFrame) -> None:
    df = numbers.filter("k = 1").where("id < 20").sort("id", ascending=False)
    assert [r["id"] for r in df.collect()] == [19, 16, 13, 10, 7, 4, 1]
    assert df.limit(2).collect() == [(19, 1, 9.5), (16, 1, 8.0)]
    assert df.limit(2, offset=1).select("id").collect() == [(16,), (13,)]
    assert df.select(["v", "id"]).columns == ["v", "id"]
    assert df.select("ID").columns == ["id"]  # names are matched case-insensitively
    assert df.drop("k").columns == ["id", "v"]
    assert df.drop(["k", "v"]).columns == ["id"]
    assert df.drop("not_there").columns == ["id", "k", "v"]  # as in Snowpark: ignored
    ordered = numbers.filter("id < 6").order_by(["k", "id"], ascending=[True, False])
    assert [r["id"] for r in ordered.collect()] == [3, 0, 4, 1, 5, 2]
    computed = numbers.filter("id = 4").select_expr("id", "v * 2 AS twice")
    assert computed.collect() == [(4, 4.0)]


def test_sort_puts_nulls_where_snowflake_does(session: Session) -> None:
    df = session.create_dataframe([(1,), (None,), (2,)], schema=["X"])
    assert [r.X for r in df.sort("X").collect()] == [1, 2, None]
    assert [r.X for r in df.sort("X", ascending=False).collect()] == [None, 2, 1]


def test_transformations_stay_lazy(session: Session) -> None:
    session.create_table("t", {"x": [1, 2, 3]})
    big = session.table("t").filter("x >= 2")
    session.create_table("t", {"x": [10, 20]}, mode="append")
    assert big.count() == 4  # the query runs when asked, on the rows there then


def test_unknown_columns_and_bad_arguments_are_clear_errors(numbers: DataFrame) -> None:
    with pytest.raises(
        ColumnError, match="column 'GHOST' is not in the data; columns are id, k, v"
    ):
        numbers.select("GHOST")
    with pytest.raises(ColumnError, match="'GHOST'"):
        numbers.sort("GHOST")
    with pytest.raises(ConfigError, match="Snowpark Column expressions are not supported"):
        numbers.filter(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Snowpark Column expressions are not supported"):
        numbers.select(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot drop every column"):
        numbers.drop("id", "k", "v")
    with pytest.raises(ConfigError, match="one bool per column"):
        numbers.sort("id", "k", ascending=[True])
    with pytest.raises(ConfigError, match="limit n must be an integer >= 0"):
        numbers.limit(-1)


def test_bad_sql_keeps_duckdbs_message(session: Session, numbers: DataFrame) -> None:
    with pytest.raises(QueryError, match="GHOST"):
        numbers.filter("GHOST > 1")
    with pytest.raises(QueryError, match="syntax error"):
        numbers.filter("id >")
    with pytest.raises(QueryError, match="query failed"):
        session.sql("SELEC nonsense")
    with pytest.raises(TableNotFoundError, match="table 'ghost' does not exist"):
        session.table("ghost")
    failing = session.sql("SELECT CAST('x' AS INTEGER) AS bad")  # fails only when run
    with pytest.raises(QueryError, match="Conversion Error"):
        failing.collect()


# -- the relation underneath -------------------------------------------------------------------


def test_duckdb_relation_methods_are_forwarded(session: Session, numbers: DataFrame) -> None:
    assert numbers.relation.columns == ["id", "k", "v"]
    assert numbers.to_arrow_table().num_rows == ROWS  # DuckDB's own API keeps working
    assert numbers.limit(0).df().columns.tolist() == ["id", "k", "v"]
    assert session.sql("SELECT count(*) FROM numbers").fetchall() == [(ROWS,)]
    grouped = numbers.aggregate("k, count(*) AS n", "k")  # a relation back: a DataFrame
    assert isinstance(grouped, DataFrame)
    assert sorted(grouped.collect()) == [(0, 3334), (1, 3333), (2, 3333)]
    assert pa.table(numbers.limit(3)).num_rows == 3  # the Arrow stream protocol
    with pytest.raises(AttributeError, match="nor has its DuckDB relation"):
        numbers.no_such_method()


def test_a_dataframe_refuses_to_pickle(numbers: DataFrame) -> None:
    with pytest.raises(ConfigError, match="cannot be sent to another process"):
        pickle.dumps(numbers)


# -- writing -----------------------------------------------------------------------------------


def test_save_as_table_in_every_mode(session: Session, numbers: DataFrame) -> None:
    few = numbers.filter("id < 3").select("id", "v")
    few.write.save_as_table("out")  # errorifexists on a new table: created
    assert session.table("out").count() == 3
    with pytest.raises(
        DatasetExistsError, match=r"table 'out' already exists; use df\.write\.mode"
    ):
        few.write.save_as_table("out")
    with pytest.raises(DatasetExistsError):
        few.write.mode("errorifexists").save_as_table("out")
    few.write.mode("append").save_as_table("out")
    assert session.table("out").count() == 6
    few.write.mode("ignore").save_as_table("out")
    assert session.table("out").count() == 6
    few.write.mode("overwrite").save_as_table("out")
    assert ids_of(session.table("out")) == [0, 1, 2]
    few.write.save_as_table("out", mode="APPEND")  # per call; case as Snowpark allows
    assert session.table("out").count() == 6
    few.write.mode("ignore").save_as_table("new_by_ignore")
    assert session.table("new_by_ignore").count() == 3


def test_truncate_keeps_the_table_and_replaces_its_rows(session: Session) -> None:
    session.sql("CREATE TABLE typed (id INTEGER, label VARCHAR)")
    session.create_dataframe([(7, "x")], schema=["id", "label"]).write.mode(
        "truncate"
    ).save_as_table("typed")
    session.create_dataframe([(8, "y"), (9, "z")], schema=["id", "label"]).write.mode(
        "truncate"
    ).save_as_table("typed")
    assert session.table("typed").collect() == [(8, "y"), (9, "z")]
    assert session.table("typed").schema.field("id").type == pa.int32()  # the table's type kept
    session.table("typed").filter("id = 9").write.mode("truncate").save_as_table("typed")
    assert session.table("typed").collect() == [(9, "z")]  # rows read from the table itself


def test_overwrite_from_the_table_itself(session: Session, numbers: DataFrame) -> None:
    numbers.filter("id < 5").write.mode("overwrite").save_as_table("numbers")
    assert ids_of(session.table("numbers")) == [0, 1, 2, 3, 4]


def test_failed_writes_and_bad_modes(session: Session, numbers: DataFrame) -> None:
    numbers.limit(2).write.save_as_table("out")
    with pytest.raises(QueryError, match="cannot write table 'out'"):
        session.create_dataframe([("x",)], schema=["other"]).write.mode("append").save_as_table(
            "out"
        )
    assert session.table("out").count() == 2  # as it was
    with pytest.raises(ConfigError, match="save mode must be one of"):
        numbers.write.mode("replace")
    with pytest.raises(ConfigError, match="a table name must not be empty"):
        numbers.write.save_as_table("")


def test_save_as_table_across_sessions(tmp_path: Path, numbers: DataFrame) -> None:
    with Session(tmp_path / "other.duckdb") as other:
        other.create_table("copy", numbers.filter("id < 4"))  # rows move through Arrow
        assert ids_of(other.table("copy")) == [0, 1, 2, 3]


# -- making DataFrames -------------------------------------------------------------------------


def test_create_dataframe_from_frames_and_rows(session: Session) -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    from_pandas = session.create_dataframe(frame)
    frame.loc[0, "a"] = 100  # the DataFrame holds its own copy
    assert from_pandas.collect() == [(1, "x"), (2, "y")]
    table = pa.table({"a": [1.5], "b": [True]})
    assert session.create_dataframe(table).collect() == [(1.5, True)]
    assert session.create_dataframe(pl.DataFrame({"z": [3]})).collect() == [(3,)]
    assert session.create_dataframe({"c": [1, 2]}).count() == 2
    tuples = session.create_dataframe([(1, "a"), [2, "b"]], schema=["N", "S"])
    assert (tuples.columns, tuples.collect()) == (["N", "S"], [(1, "a"), (2, "b")])
    assert session.create_dataframe([(1, 2)]).columns == ["_1", "_2"]  # Snowpark's names
    assert session.create_dataframe([1, 2, 3], schema=["x"]).count() == 3
    assert session.create_dataframe([{"p": 1}, {"p": 2}]).columns == ["p"]
    assert session.create_dataframe([Row(P=1, Q=2)]).columns == ["P", "Q"]
    renamed = session.create_dataframe(frame, schema=["A", "B"])
    assert renamed.columns == ["A", "B"]
    typed = session.create_dataframe([(1,)], schema=pa.schema([("i", pa.int16())]))
    assert typed.schema.field("i").type == pa.int16()
    assert session.tables() == []  # the temporary tables behind them are not listed


def test_create_dataframe_rejects_what_it_cannot_read(session: Session) -> None:
    with pytest.raises(ConfigError, match="every row must be a tuple or list of 2 values"):
        session.create_dataframe([(1, 2), (3,)])
    with pytest.raises(ConfigError, match="schema names 3 columns"):
        session.create_dataframe([(1, 2)], schema=["a", "b", "c"])
    with pytest.raises(ConfigError, match="schema must be a list of column names"):
        session.create_dataframe([(1,)], schema="a int")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"cannot read a builtins\.set"):
        session.create_dataframe({1, 2})
    with pytest.raises(ConfigError, match="cannot make columns"):
        session.create_dataframe([(1,), ("x",)], schema=["mixed"])


def test_write_pandas(session: Session) -> None:
    frame = pd.DataFrame({"id": [1, 2], "score": [0.5, 0.25]})
    with pytest.raises(TableNotFoundError, match="auto_create_table=True"):
        session.write_pandas(frame, "scores")
    out = session.write_pandas(frame, "scores", auto_create_table=True)
    assert isinstance(out, DataFrame) and out.count() == 2
    session.write_pandas(frame, "scores")  # appends
    assert session.table("scores").count() == 4
    session.write_pandas(frame.head(1), "scores", overwrite=True)  # truncates
    assert session.table("scores").collect() == [(1, 0.5)]
    wider = frame.assign(extra=["a", "b"])
    session.write_pandas(wider, "scores", auto_create_table=True, overwrite=True)  # replaces
    assert session.table("scores").columns == ["id", "score", "extra"]


# -- everything that accepts data accepts a DataFrame ------------------------------------------


def test_data_connector_reads_exactly_a_part(numbers: DataFrame) -> None:
    train, test = numbers.random_split([0.8, 0.2], seed=11)
    read = DataConnector.from_dataframe(test).to_arrow()
    assert sorted(read.column("id").to_pylist()) == ids_of(test)
    assert read.column_names == ["id", "k", "v"]
    source = source_from_object(train)
    assert isinstance(source, DuckDBSource)
    assert not isinstance(source.relation, DataFrame)  # the relation itself, for staging
    batches = DataConnector.from_dataframe(train).to_batches(batch_size=1000, drop_last_batch=False)
    assert sum(len(b["id"]) for b in batches) == train.count()


def test_from_sql_and_duckdb_source_unwrap_the_dataframe(
    session: Session, numbers: DataFrame
) -> None:
    dc = DataConnector.from_sql("SELECT id FROM numbers WHERE k = 2", session=session)
    assert isinstance(dc.sources[0], DuckDBSource)
    assert not isinstance(dc.sources[0].relation, DataFrame)
    assert dc.to_arrow().num_rows == 3333
    assert DuckDBSource(numbers).relation is numbers.relation


def test_create_from_dataframe_of_a_part(
    numbers: DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLRUNTIME_HOME", str(tmp_path / "home"))
    _, test = numbers.random_split([0.8, 0.2], seed=5)
    dataset = mlruntime.create_from_dataframe("split_part", "v1", test)
    assert dataset.num_rows == test.count()
    read = DataConnector.from_dataset("split_part", "v1").to_arrow()
    assert sorted(read.column("id").to_pylist()) == ids_of(test)


def test_sinks_take_a_dataframe(tmp_path: Path, session: Session, numbers: DataFrame) -> None:
    part = numbers.filter("id < 10")
    DuckDBTableSink("sunk", session).write(part)
    assert ids_of(session.table("sunk")) == list(range(10))
    folder = ParquetSink(str(tmp_path / "sunk")).write(part)
    assert sorted(pq.read_table(folder).column("id").to_pylist()) == list(range(10))


def test_sample_and_subtract_split_like_the_quickstarts() -> None:
    session = mlruntime.Session(":memory:")
    session.create_table("v", {"id": list(range(2000)), "x": [i * 0.5 for i in range(2000)]})
    df = session.table("v")
    train = df.sample(0.9)
    test = df.subtract(train)
    n_train, n_test = train.count(), test.count()
    assert 1700 < n_train < 1900
    ids = {r["id"] for r in train.collect()} | {r["id"] for r in test.collect()}
    assert n_test == 2000 - n_train and ids == set(range(2000))
    assert df.sample(n=5).count() == 5 and df.sample(1.0).count() == 2000
    with pytest.raises(ConfigError, match="exactly one"):
        df.sample()
