"""Shards cover every row once, balanced and deterministic; shuffles are seeded, differ per
epoch and mix rows of different fragments."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlruntime import DataConnector, ShardedDataConnector
from mlruntime.data.sources import ArrowSource
from mlruntime.errors import ConfigError, NotInWorkerError
from mlruntime.testing import sample_table


def multi_source_connector(sizes: list[int], fragment_rows: int) -> DataConnector:
    sources, start = [], 0
    for size in sizes:
        sources.append(ArrowSource(sample_table(start, size), rows_per_fragment=fragment_rows))
        start += size
    return DataConnector(sources)


def shard_ids(shard: DataConnector) -> list[int]:
    return shard.to_arrow().column("id").to_pylist()


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=5),
    fragment_rows=st.integers(min_value=1, max_value=25),
    n=st.integers(min_value=1, max_value=12),
)
def test_shards_cover_every_row_once_balanced_and_deterministic(
    sizes: list[int], fragment_rows: int, n: int
) -> None:
    total = sum(sizes)
    dc = multi_source_connector(sizes, fragment_rows)
    if n > total:
        with pytest.raises(ConfigError, match=f"cannot make {n} shards of {total} rows"):
            dc.shard(n)
        return
    shards = dc.shard(n)
    ids = [shard_ids(s) for s in shards]
    assert sorted(i for part in ids for i in part) == list(range(total))  # every row exactly once
    lengths = [len(part) for part in ids]
    assert max(lengths) - min(lengths) <= 1  # balanced
    assert [s.count_rows() for s in shards] == lengths
    again = multi_source_connector(sizes, fragment_rows).shard(n)
    assert [shard_ids(s) for s in again] == ids  # deterministic
    equal = dc.shard(n, equal=True)
    eq_ids = [shard_ids(s) for s in equal]
    assert {len(p) for p in eq_ids} == {total // n}
    flat = [i for part in eq_ids for i in part]
    assert len(set(flat)) == len(flat) == total // n * n


def test_equal_shards_say_how_many_rows_they_drop(caplog: pytest.LogCaptureFixture) -> None:
    dc = DataConnector.from_dataframe(sample_table(0, 10))
    with caplog.at_level(logging.WARNING, logger="mlruntime.data.connector"):
        shards = dc.shard(3, equal=True)
    assert [s.count_rows() for s in shards] == [3, 3, 3]
    assert "drops the last 1 of 10 rows" in caplog.text


@pytest.mark.parametrize("n", [0, -1, 1.5, "2"])
def test_bad_shard_counts(n: object) -> None:
    with pytest.raises(ConfigError, match="shard count must be a positive integer"):
        DataConnector.from_dataframe(sample_table(0, 10)).shard(n)  # type: ignore[arg-type]


def test_shards_of_parquet_row_groups_pickle_and_read_elsewhere(parquet_dir: Path) -> None:
    shards = DataConnector.from_sources(parquet_dir).shard(4)
    travelled = [pickle.loads(pickle.dumps(s)) for s in shards]
    assert [shard_ids(s) for s in travelled] == [shard_ids(s) for s in shards]
    assert [len(shard_ids(s)) for s in travelled] == [75, 75, 75, 75]


def test_sharded_connector_picks_the_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    sharded = ShardedDataConnector(DataConnector.from_dataframe(sample_table(0, 10)))
    assert shard_ids(sharded.get_shard(rank=1, world_size=2)) == [5, 6, 7, 8, 9]
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(NotInWorkerError, match="inside a distributed worker"):
        sharded.get_shard()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "5")
    assert shard_ids(sharded.get_shard()) == [0, 1]
    with pytest.raises(ConfigError, match=r"rank must be in \[0, 2\)"):
        sharded.get_shard(rank=2, world_size=2)


def epoch_ids(dc: DataConnector, **kwargs: object) -> list[int]:
    batches = dc.to_batches(batch_size=16, shuffle=True, drop_last_batch=False, **kwargs)
    return np.concatenate([b["id"] for b in batches]).tolist()


def test_shuffle_is_reproducible_and_differs_per_epoch(parquet_dir: Path) -> None:
    dc = DataConnector.from_sources(parquet_dir)
    a0 = epoch_ids(dc, seed=7, epoch=0)
    assert sorted(a0) == list(range(300))  # each row exactly once per epoch
    assert a0 != list(range(300))
    assert epoch_ids(DataConnector.from_sources(parquet_dir), seed=7, epoch=0) == a0
    assert epoch_ids(dc, seed=7, epoch=1) != a0
    fresh = DataConnector.from_sources(parquet_dir)
    auto = [epoch_ids(fresh, seed=7) for _ in range(2)]  # the epoch counter advances
    assert auto[0] == a0 and auto[1] != a0
    assert epoch_ids(dc, seed=8, epoch=0) != a0


def test_shuffle_mixes_rows_of_different_fragments() -> None:
    # 8 fragments of 1,000 rows; a window mixes several, so a batch holds rows of many fragments
    dc = DataConnector([ArrowSource(sample_table(0, 8000), rows_per_fragment=1000)])
    batches = list(dc.to_batches(batch_size=100, shuffle=True, seed=0, shuffle_buffer_size=2000))
    fragments_per_batch = [len(set((b["id"] // 1000).tolist())) for b in batches]
    assert min(fragments_per_batch) >= 2
    first_batch_positions = batches[0]["id"] % 1000
    assert first_batch_positions.std() > 200  # rows from all over each fragment, not a run


def test_shuffle_keeps_rows_aligned_across_columns() -> None:
    table = pa.table({"id": np.arange(5000), "twice": np.arange(5000) * 2})
    for batch in DataConnector.from_dataframe(table).to_batches(64, shuffle=True, seed=1):
        assert (batch["twice"] == batch["id"] * 2).all()


def test_pickled_shard_of_an_in_memory_table_carries_only_its_rows() -> None:
    dc = DataConnector.from_dataframe(sample_table(0, 200_000))
    shard = dc.shard(100)[7]
    payload = pickle.dumps(shard)
    assert len(payload) < 200_000 * 16 / 50  # ~1/100 of the table, not all of it
    back = pickle.loads(payload)
    assert shard_ids(back) == list(range(14_000, 16_000))
    assert "rows=2000" in repr(back)
