"""Arrow -> numpy conversion rules used by every DataConnector output.

| Arrow type                         | numpy result                                         |
|------------------------------------|------------------------------------------------------|
| int/uint/float, no nulls           | same dtype, **zero-copy** (read-only view)           |
| int/uint with nulls                | float64, nulls -> NaN                                |
| float with nulls                   | same float dtype, nulls -> NaN                       |
| bool, no nulls                     | bool (a copy: Arrow packs bits)                      |
| bool with nulls                    | float64: 1.0 / 0.0, nulls -> NaN                     |
| decimal128/256                     | float64 (precision beyond ~15 digits is lost)        |
| string / large_string              | object array of ``str``, nulls -> ``None``           |
| dictionary                         | its decoded values, by the rules above               |
| timestamp[unit, tz]                | datetime64[unit] (UTC for tz-aware), nulls -> NaT    |
| date32 / date64                    | datetime64[D] / datetime64[ms], nulls -> NaT         |
| duration[unit]                     | timedelta64[unit], nulls -> NaT                      |
| fixed_size_list<fixed width>[k]    | 2-D array of shape (rows, k), zero-copy without nulls |
| null                               | float64, all NaN                                     |
| other (lists, structs, binary)     | object array of Python values                        |
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlruntime.errors import DataError

__all__ = ["column_to_numpy", "table_to_numpy", "to_single_array"]


def to_single_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Return ``column`` as one contiguous Arrow array (copies only if it has several chunks)."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 1:
            return column.chunk(0)
        if column.num_chunks == 0:
            return pa.array([], type=column.type)
        return column.combine_chunks()
    return column


def column_to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Convert one Arrow column to numpy following the table in this module's docstring.

    Args:
        column: An Arrow array or chunked array.

    Returns:
        A numpy array; zero-copy (and then read-only) for fixed-width columns without nulls.

    Raises:
        DataError: For a fixed-size list column with null lists of a non-float type.
    """
    arr = to_single_array(column)
    typ = arr.type
    if pa.types.is_dictionary(typ):
        return column_to_numpy(arr.dictionary_decode())
    if pa.types.is_null(typ):
        return np.full(len(arr), np.nan)
    has_nulls = arr.null_count > 0
    if pa.types.is_integer(typ):
        if has_nulls:
            return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
        return arr.to_numpy(zero_copy_only=True)
    if pa.types.is_floating(typ):
        return arr.to_numpy(zero_copy_only=not has_nulls)
    if pa.types.is_boolean(typ):
        if has_nulls:
            return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
        return arr.to_numpy(zero_copy_only=False)
    if pa.types.is_decimal(typ):
        return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(typ):
        if typ.tz is not None:
            arr = arr.cast(pa.timestamp(typ.unit))
        return arr.to_numpy(zero_copy_only=False)
    if pa.types.is_date(typ) or pa.types.is_duration(typ):
        return arr.to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(typ):
        return _fixed_size_list_to_2d(arr)
    return arr.to_numpy(zero_copy_only=False)


def _fixed_size_list_to_2d(arr: pa.FixedSizeListArray) -> np.ndarray:
    width = arr.type.list_size
    value_type = arr.type.value_type
    values = arr.values.slice(arr.offset * width, len(arr) * width)
    if arr.null_count == 0:
        return column_to_numpy(values).reshape(len(arr), width)
    if not pa.types.is_floating(value_type):
        raise DataError(
            f"fixed_size_list<{value_type}>[{width}] column has {arr.null_count} null list(s); "
            "fill them (e.g. with zeros) or cast the values to float so nulls become NaN"
        )
    out = np.array(column_to_numpy(values), dtype=value_type.to_pandas_dtype()).reshape(
        len(arr), width
    )
    out[~np.asarray(arr.is_valid())] = np.nan
    return out


def table_to_numpy(
    table: pa.Table | pa.RecordBatch, columns: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Convert the named columns (default: all) of a table to a dict of numpy arrays."""
    names = table.column_names if columns is None else columns
    return {name: column_to_numpy(table.column(name)) for name in names}
