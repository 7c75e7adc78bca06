"""Rows of a warehouse DataFrame's ``collect()``: tuples whose values are also read by name.

Snowpark's ``Row`` shape: ``row[0]``, ``row["COL"]``, ``row.COL`` and ``row.asDict()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, SupportsIndex, overload

from mlruntime.errors import ColumnError, ConfigError

__all__ = ["Row"]


class Row(tuple[Any, ...]):
    """One row of :meth:`DataFrame.collect`: a tuple whose values are also read by column name.

    ``row[0]``, ``row["KM"]`` and ``row.KM`` all work; a name that matches no column exactly is
    looked up case-insensitively (Snowflake upper-cases names, DuckDB keeps them as written).
    Rows compare equal to plain tuples of the same values.

    Args:
        *values: The values, positionally (``Row(1, "a")``), or
        **named: Name/value pairs (``Row(KM=1.5, CITY="a")``); not both.

    Raises:
        ConfigError: If both positional values and names are given.
    """

    _fields: tuple[str, ...]

    def __new__(cls, *values: Any, **named: Any) -> Row:
        if values and named:
            raise ConfigError("Row takes values or name=value pairs, not both")
        return cls._make(tuple(named), tuple(named.values()) if named else values)

    @classmethod
    def _make(cls, fields: tuple[str, ...], values: Iterable[Any]) -> Row:
        row = tuple.__new__(cls, values)
        row._fields = fields
        return row

    def _index(self, name: str) -> int:
        fields = self.__dict__.get("_fields", ())
        if name in fields:
            return fields.index(name)
        folded = [i for i, f in enumerate(fields) if f.lower() == name.lower()]
        if len(folded) == 1:
            return folded[0]
        raise ColumnError(
            f"column {name!r} is not in the row; columns are {', '.join(fields) or 'none'}"
        )

    @overload
    def __getitem__(self, key: SupportsIndex) -> Any: ...

    @overload
    def __getitem__(self, key: slice) -> tuple[Any, ...]: ...

    @overload
    def __getitem__(self, key: str) -> Any: ...

    def __getitem__(self, key: SupportsIndex | slice | str) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index(key))
        return tuple.__getitem__(self, key)

    def __getattr__(self, name: str) -> Any:
        try:
            return tuple.__getitem__(self, self._index(name))
        except ColumnError as exc:
            raise AttributeError(str(exc)) from None

    def as_dict(self, recursive: bool = False) -> dict[str, Any]:
        """The row as ``{column: value}`` (``recursive``: nested Rows become dicts too)."""

        def convert(value: Any) -> Any:
            if recursive and isinstance(value, Row):
                return value.as_dict(recursive=True)
            return value

        return {name: convert(value) for name, value in zip(self._fields, self, strict=True)}

    asDict = as_dict  # Snowpark's camel-case name

    def __repr__(self) -> str:
        if not self._fields:
            return f"Row({', '.join(repr(v) for v in self)})"
        return f"Row({', '.join(f'{n}={v!r}' for n, v in zip(self._fields, self, strict=True))})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_row, (self._fields, tuple(self)))


def _rebuild_row(fields: tuple[str, ...], values: tuple[Any, ...]) -> Row:
    return Row._make(fields, values)
