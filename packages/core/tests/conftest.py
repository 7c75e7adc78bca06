"""Fixtures of the core tests: small real Parquet/CSV files made per test."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mlruntime.testing import sample_table


@pytest.fixture
def parquet_dir(tmp_path: Path) -> Path:
    """Three Parquet files of 100, 70 and 130 rows (ids 0..299), row groups of 32 rows."""
    folder = tmp_path / "data"
    folder.mkdir()
    start = 0
    for i, rows in enumerate((100, 70, 130)):
        pq.write_table(sample_table(start, rows), folder / f"part-{i}.parquet", row_group_size=32)
        start += rows
    return folder
