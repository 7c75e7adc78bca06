"""Passes over data stream with bounded memory, and reads run ahead of the consumer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlruntime import DataConnector
from mlruntime.data.sources import Fragment, Source

ROWS_PER_FILE = 10_000_000
FILES = 4  # 4 x 10M rows x 8 bytes = 320 MB of float32 data


@pytest.fixture(scope="module")
def big_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    for i in range(FILES):
        with pq.ParquetWriter(
            folder / f"part-{i}.parquet",
            pa.schema([("a", pa.float32()), ("b", pa.float32())]),
            compression="none",
        ) as writer:
            for _ in range(ROWS_PER_FILE // 1_000_000):
                chunk = rng.random((2, 1_000_000), dtype=np.float32)
                writer.write_table(pa.table({"a": chunk[0], "b": chunk[1]}), row_group_size=500_000)
    return folder


def _peak_rss_delta(code: str) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter; it calls ``start()`` right before the measured work
    and sets ``result``. Returns ``result`` plus ``delta``: peak RSS during the work (Linux
    VmHWM, reset by ``start()``) minus RSS at ``start()``."""
    probe = (
        textwrap.dedent(
            """
        import gc, json, psutil
        import numpy as np
        from mlruntime import DataConnector

        def start():
            global base
            gc.collect()
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # reset the peak-RSS counter
            base = psutil.Process().memory_info().rss

        def peak():
            with open("/proc/self/status") as handle:
                line = next(ln for ln in handle if ln.startswith("VmHWM:"))
            return int(line.split()[1]) * 1024
        """
        )
        + textwrap.dedent(code)
        + textwrap.dedent(
            """
        print(json.dumps({"delta": peak() - base, **result}))
        """
        )
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pass_growth(path: Path, shuffle: bool) -> float:
    res = _peak_rss_delta(
        f"""
        dc = DataConnector.from_sources({str(path)!r})
        next(DataConnector.from_sources({str(path)!r}).to_batches(100))  # warm the reader
        start()
        rows = 0
        for batch in dc.to_batches(65536, shuffle={shuffle}, seed=0):
            rows += len(batch["a"])
        result = {{"rows": rows, "expected": dc.num_rows // 65536 * 65536}}
        """
    )
    assert res["rows"] == res["expected"]
    return res["delta"]


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", [False, True])
def test_full_pass_memory_does_not_grow_with_the_data(big_parquet: Path, shuffle: bool) -> None:
    # Reading 4x the data must not cost more memory: nothing is materialized whole.
    one_file = _pass_growth(big_parquet / "part-0.parquet", shuffle)
    all_files = _pass_growth(big_parquet, shuffle)
    extra_data = (FILES - 1) * ROWS_PER_FILE * 8  # 240 MB more data in the second pass
    print("pass growth MiB", shuffle, one_file / 2**20, all_files / 2**20)
    assert all_files - one_file < extra_data / 6, (one_file / 2**20, all_files / 2**20)
    assert all_files < FILES * ROWS_PER_FILE * 8 / 2


@pytest.mark.slow
def test_to_pandas_peak_memory_is_at_most_twice_the_frame(big_parquet: Path) -> None:
    res = _peak_rss_delta(
        f"""
        dc = DataConnector.from_sources({str(big_parquet / "part-0.parquet")!r})
        dc.to_pandas(limit=1000)  # warm the reader and converter
        start()
        df = dc.to_pandas()
        result = {{"frame": float(df.memory_usage(index=False).sum()), "rows": len(df)}}
        """
    )
    assert res["rows"] == ROWS_PER_FILE
    print("to_pandas peak/frame", res["delta"] / res["frame"])
    assert res["delta"] <= 2 * res["frame"], res["delta"] / res["frame"]


class _SignallingFragment(Fragment):
    """A fragment that records when it is read."""

    def __init__(self, index: int, started: list[threading.Event]) -> None:
        self.index = index
        self.started = started
        self.num_rows = 10

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        self.started[self.index].set()
        return pa.table({"i": np.full(10, self.index)})

    def describe(self) -> str:
        return f"signal[{self.index}]"

    def __reduce__(self) -> tuple[object, ...]:  # pragma: no cover - stays in process
        raise TypeError("not picklable")


class _SignallingSource(Source):
    def __init__(self, n: int) -> None:
        self.started = [threading.Event() for _ in range(n)]
        self._fragments: list[Fragment] = [_SignallingFragment(i, self.started) for i in range(n)]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([("i", pa.int64())])

    def fragments(self) -> list[Fragment]:
        return self._fragments

    def describe(self) -> str:
        return "signals"


def test_reads_are_prefetched_in_the_background() -> None:
    source = _SignallingSource(6)
    batches = DataConnector([source]).to_batches(batch_size=10, prefetch_tables=2)
    first = next(batches)
    assert first["i"].tolist() == [0] * 10
    # While the consumer holds batch 0, the reader thread fetches the next tables by itself.
    assert source.started[1].wait(timeout=30)
    assert source.started[2].wait(timeout=30)
    assert not source.started[5].is_set()  # but only a bounded number ahead
    assert [int(b["i"][0]) for b in batches] == [1, 2, 3, 4, 5]


def test_reader_errors_reach_the_consumer() -> None:
    class Broken(_SignallingFragment):
        def read(self, columns: Sequence[str] | None = None) -> pa.Table:
            raise OSError("bad sector")

    source = _SignallingSource(3)
    source._fragments[1] = Broken(1, source.started)
    batches = DataConnector([source]).to_batches(batch_size=10)
    assert next(batches)["i"][0] == 0
    with pytest.raises(OSError, match="bad sector"):
        next(batches)


def test_read_ahead_starts_before_it_is_iterated_and_stays_bounded() -> None:
    from mlruntime.data.batching import ReadAhead

    produced: list[int] = []
    third = threading.Event()

    def items() -> Iterator[int]:
        for i in range(10):
            produced.append(i)
            if i == 2:
                third.set()
            yield i

    ahead = ReadAhead(items(), depth=2)
    # nobody asked for anything yet: the thread already read up to depth (+1 in its hand)
    assert third.wait(timeout=30)
    time.sleep(0.3)
    assert produced == [0, 1, 2]
    assert list(ahead) == list(range(10))
    assert list(ahead) == []  # consumed once


def test_a_large_head_start_keeps_few_items_ahead_once_the_consumer_begins() -> None:
    from mlruntime.data.batching import ReadAhead

    produced: list[int] = []

    def items() -> Iterator[int]:
        for i in range(100):
            produced.append(i)
            yield i

    ahead = ReadAhead(items(), depth=5, then=1)
    deadline = time.monotonic() + 30
    while len(produced) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(produced) == 6  # five ready, the sixth in the reader's hand
    assert [next(ahead) for _ in range(5)] == [0, 1, 2, 3, 4]
    time.sleep(0.3)
    # one kept ready (5) and one in hand (6), not five more: what the consumer takes, it
    # holds itself (a cache), and the head start does not add to it
    assert len(produced) == 7
    assert list(ahead) == list(range(5, 100))


def test_read_ahead_close_stops_the_reader_and_errors_reach_the_consumer() -> None:
    import itertools

    from mlruntime.data.batching import ReadAhead

    cleaned = threading.Event()

    def endless() -> Iterator[int]:
        try:
            yield from itertools.count()
        finally:  # a reader's own clean-up (its files, its threads)
            cleaned.set()

    ahead = ReadAhead(endless(), depth=3, name="test-read-ahead")
    assert next(ahead) == 0
    ahead.close()
    assert not any(t.name == "test-read-ahead" for t in threading.enumerate())
    assert cleaned.is_set()
    assert list(ahead) == []

    def broken() -> Iterator[int]:
        yield 1
        raise OSError("bad sector")

    failing = ReadAhead(broken(), depth=1)
    assert next(failing) == 1
    with pytest.raises(OSError, match="bad sector"):
        next(failing)


def test_read_ahead_features_gives_feature_batches_and_bounds_its_memory(
    tmp_path: Path,
) -> None:
    import pandas as pd

    from mlruntime.train.features import feature_batches, read_ahead_features

    frame = pd.DataFrame(
        {"a": np.arange(1000, dtype=np.float64), "b": np.arange(1000) % 7, "y": np.ones(1000)}
    )
    frame.to_parquet(tmp_path / "part.parquet", row_group_size=300)
    connector = DataConnector.from_sources(tmp_path)
    want = list(feature_batches(connector, ["a", "b"], "y", batch_size=128))
    # 128 rows x (2 features + label) x 4 bytes = 1,536 bytes a batch: 3,000 bytes hold one
    ahead = read_ahead_features(connector, ["a", "b"], "y", batch_size=128, max_bytes=3000)
    assert ahead._limit == 1
    got = list(ahead)
    assert len(got) == len(want) == 8
    for (x, y, w), (wx, wy, ww) in zip(got, want, strict=True):
        np.testing.assert_array_equal(x, wx)
        np.testing.assert_array_equal(y, wy)
        assert w is None and ww is None
    default = read_ahead_features(connector, ["a", "b"], "y", batch_size=128)
    assert default._limit > 1  # a quarter of the available memory holds many
    default.close()


def test_closing_a_read_ahead_wakes_its_consumer_and_need_not_wait_for_the_reader() -> None:
    from mlruntime.data.batching import ReadAhead

    release = threading.Event()

    def slow() -> Iterator[int]:
        yield 0
        release.wait(timeout=60)  # an item that takes long to make (a whole shard)
        yield 1

    ahead = ReadAhead(slow(), depth=1, name="test-slow-reader")
    assert next(ahead) == 0
    got: list[object] = []
    consumer = threading.Thread(target=lambda: got.append(list(ahead)))
    consumer.start()  # waits for item 1
    closer = threading.Thread(target=ahead.close, kwargs={"wait": False})
    closer.start()
    closer.join(timeout=30)
    consumer.join(timeout=30)
    assert not closer.is_alive()  # returned while the reader is still inside its item
    assert not consumer.is_alive() and got == [[]]  # woken, and told the items ended
    release.set()
    ahead._thread.join(timeout=30)
    assert not ahead._thread.is_alive()  # the reader stops by itself after that item
