"""Fixtures of the LightGBM plugin tests: a small regression problem, as frames and Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

FEATURES = [f"f{i}" for i in range(5)]


def make_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.random((rows, len(FEATURES))).astype(np.float32)
    y = x @ np.array([1.0, 2.0, 3.0, 0.0, -1.0], dtype=np.float32)
    y = y + rng.normal(0, 0.1, rows).astype(np.float32)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["y"] = y
    frame["key"] = np.arange(rows)
    return frame


@pytest.fixture
def frame() -> pd.DataFrame:
    return make_frame(4000)


@pytest.fixture
def parquet_folder(tmp_path: Path, frame: pd.DataFrame) -> Path:
    folder = tmp_path / "train"
    folder.mkdir()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for i in range(4):
        pq.write_table(
            table.slice(i * 1000, 1000), folder / f"part-{i}.parquet", row_group_size=250
        )
    return folder
