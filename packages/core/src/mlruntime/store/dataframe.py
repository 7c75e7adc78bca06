"""A Snowpark-flavoured DataFrame over a lazy DuckDB relation of a warehouse session.

``session.table``, ``session.sql`` and ``session.create_dataframe`` return one; Snowpark's
method names are kept so notebook code ports by changing imports.
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import duckdb
import pyarrow as pa

from mlruntime.data.inputs import quote_column
from mlruntime.errors import ColumnError, ConfigError, DatasetExistsError, QueryError
from mlruntime.store.row import Row

__all__ = ["SAVE_MODES", "DataFrame", "DataFrameWriter"]

SAVE_MODES = ("append", "overwrite", "errorifexists", "ignore", "truncate")
"""Snowpark's save modes of ``df.write.mode(...)``."""

_SESSION_MODES = {
    "append": "append",
    "overwrite": "overwrite",
    "errorifexists": "error",
    "ignore": "ignore",
    "truncate": "truncate",
}
_SPLIT_HASH = "__mlruntime_split_hash"
_SPLIT_DRAW = "__mlruntime_split_draw"
_T = TypeVar("_T")


class Warehouse(Protocol):
    """What a DataFrame needs from its session (:class:`mlruntime.store.session.Session`)."""

    def has_table(self, name: str) -> bool:
        """Whether ``name`` is a table or view."""

    def create_table(self, name: str, data: Any, *, mode: str = "error") -> Any:
        """Write ``data`` into table ``name``."""


def _names(cols: tuple[Any, ...], what: str) -> list[str]:
    """Column names from ``*cols`` given as names or one list of names."""
    if len(cols) == 1 and isinstance(cols[0], (list, tuple)):
        cols = tuple(cols[0])
    for col in cols:
        if not isinstance(col, str):
            raise ConfigError(
                f"{what} takes column names (str), got {type(col).__name__}; Snowpark Column "
                "expressions are not supported: use SQL strings (df.filter('KM > 2'), "
                "df.select_expr('KM * 2 AS KM2')) or session.sql(...)"
            )
    return list(cols)


class DataFrame:
    """A lazy table of a warehouse session, with Snowpark's DataFrame method names.

    Every method that returns a DataFrame only describes a query (DuckDB relations are lazy);
    rows are read by ``collect``, ``count``, ``to_pandas``, ``to_arrow``, ``show``, a write, or
    by ``DataConnector.from_dataframe(df)`` and the estimators, which accept a DataFrame
    wherever they accept a DuckDB relation.

    Column names are matched exactly, then case-insensitively. Filters, sorts and computed
    columns take SQL text; Snowpark ``Column`` expressions (``col("A") > 1``) are not supported.
    Attributes that a DataFrame does not define are forwarded to its DuckDB relation
    (``df.fetchall()``, ``df.to_arrow_table()``, ``df.aggregate(...)``): relations those return
    come back as DataFrames, and DataFrame arguments are handed over as their relations.

    Args:
        relation: The ``duckdb.DuckDBPyRelation`` (of ``session.connection``).
        session: The session it belongs to (writes go there).

    Example:
        >>> from mlruntime import Session
        >>> session = Session(":memory:")
        >>> df = session.create_dataframe([(1, "a"), (2, "b"), (3, "c")], schema=["ID", "TAG"])
        >>> df.filter("ID >= 2").sort("ID", ascending=False).collect()[0]["TAG"]
        'c'
    """

    def __init__(self, relation: duckdb.DuckDBPyRelation, session: Warehouse) -> None:
        self._relation = relation
        self._session = session

    # -- what it wraps ---------------------------------------------------------------------

    @property
    def relation(self) -> duckdb.DuckDBPyRelation:
        """The underlying DuckDB relation (the escape hatch to DuckDB's own API)."""
        return self._relation

    @property
    def session(self) -> Warehouse:
        """The session this DataFrame reads from and writes to."""
        return self._session

    def __mlruntime_relation__(self) -> duckdb.DuckDBPyRelation:
        """The relation protocol the data layer reads (``source_from_object``, ``DuckDBSource``)."""
        return self._relation

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """The Arrow PyCapsule stream of the rows (``pyarrow.table(df)``, polars ...)."""
        return self._relation.__arrow_c_stream__(requested_schema)

    def __getattr__(self, name: str) -> Any:
        relation = self.__dict__.get("_relation")
        if relation is None or name.startswith("__"):
            raise AttributeError(f"'DataFrame' object has no attribute {name!r}")
        try:
            value = getattr(relation, name)
        except AttributeError:
            raise AttributeError(
                f"'DataFrame' object has no attribute {name!r} (nor has its DuckDB relation)"
            ) from None
        if not callable(value):
            return value

        @functools.wraps(value)
        def forwarded(*args: Any, **kwargs: Any) -> Any:
            result = value(
                *(_unwrap(a) for a in args), **{k: _unwrap(v) for k, v in kwargs.items()}
            )
            if isinstance(result, duckdb.DuckDBPyRelation):
                return DataFrame(result, self._session)
            return result

        return forwarded

    def __reduce__(self) -> tuple[Any, ...]:
        raise ConfigError(
            "a DataFrame cannot be sent to another process: its DuckDB connection stays in "
            "this one. Jobs and estimators stage it for their workers by themselves "
            "(DataConnector.from_dataframe(df)); to send the rows, read them first "
            "(df.to_arrow() or df.to_pandas())"
        )

    def __repr__(self) -> str:
        columns = ", ".join(
            f"{c} {t}" for c, t in zip(self._relation.columns, self._types(), strict=True)
        )
        return f"DataFrame({columns})"

    def _types(self) -> list[str]:
        return [str(t) for t in self._relation.types]

    def _wrap(
        self, build: Callable[[duckdb.DuckDBPyRelation], duckdb.DuckDBPyRelation]
    ) -> DataFrame:
        return DataFrame(_run(lambda: build(self._relation)), self._session)

    # -- description -----------------------------------------------------------------------

    @property
    def columns(self) -> list[str]:
        """The column names, in order."""
        return list(self._relation.columns)

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the rows (no rows are read)."""
        return _run(lambda: self._relation.limit(0).to_arrow_table().schema)

    def _resolve(self, name: str) -> str:
        columns = self.columns
        if name in columns:
            return name
        folded = [c for c in columns if c.lower() == name.lower()]
        if len(folded) == 1:
            return folded[0]
        raise ColumnError(
            f"column {name!r} is not in the data; columns are {', '.join(columns) or 'none'}"
        )

    # -- transformations (lazy) ------------------------------------------------------------

    def select(self, *cols: str | Sequence[str]) -> DataFrame:
        """Keep these columns, in this order (names, or one list of names).

        Raises:
            ColumnError: For a name that is not a column.
            ConfigError: For no names, or a non-string (Snowpark Column expressions are not
                supported; use :meth:`select_expr` for computed columns).
        """
        names = [self._resolve(n) for n in _names(cols, "select")]
        if not names:
            raise ConfigError("select needs at least one column name")
        return self._wrap(lambda r: r.select(*(quote_column(n) for n in names)))

    def select_expr(self, *exprs: str | Sequence[str]) -> DataFrame:
        """Select SQL expressions (``df.select_expr("KM", "FARE / KM AS PER_KM")``).

        Raises:
            QueryError: If DuckDB rejects an expression (its message is kept).
            ConfigError: For no expressions or a non-string.
        """
        texts = _names(exprs, "select_expr")
        if not texts:
            raise ConfigError("select_expr needs at least one SQL expression")
        return self._wrap(lambda r: r.select(", ".join(texts)))

    def filter(self, condition: str) -> DataFrame:
        """Keep the rows for which a SQL boolean expression holds (``"KM > 2 AND CITY = 'x'"``).

        Snowpark ``Column`` expressions (``col("KM") > 2``) are not supported: pass the
        condition as SQL text.

        Raises:
            ConfigError: If ``condition`` is not a string.
            QueryError: If DuckDB rejects the expression, or it names an unknown column (the
                message is DuckDB's).
        """
        if not isinstance(condition, str) or not condition.strip():
            raise ConfigError(
                f'filter takes a SQL boolean expression string such as "KM > 2", got '
                f"{type(condition).__name__}; Snowpark Column expressions are not supported"
            )
        return self._wrap(lambda r: r.filter(condition))

    where = filter

    def drop(self, *cols: str | Sequence[str]) -> DataFrame:
        """Leave out these columns (names, or one list of names).

        As in Snowpark, a name that is not a column is ignored.

        Raises:
            ConfigError: If every column would be dropped, or for a non-string.
        """
        dropped = set()
        for name in _names(cols, "drop"):
            try:
                dropped.add(self._resolve(name))
            except ColumnError:
                continue
        kept = [c for c in self.columns if c not in dropped]
        if not kept:
            raise ConfigError("cannot drop every column of a DataFrame")
        return self._wrap(lambda r: r.select(*(quote_column(c) for c in kept)))

    def sort(
        self, *cols: str | Sequence[str], ascending: bool | Sequence[bool] = True
    ) -> DataFrame:
        """Order the rows by these columns.

        Nulls come last when ascending and first when descending, as in Snowflake.

        Args:
            *cols: Column names, or one list of names.
            ascending: One flag for all columns, or one per column.

        Raises:
            ColumnError: For a name that is not a column.
            ConfigError: For no columns, or a list of flags of the wrong length.
        """
        names = [self._resolve(n) for n in _names(cols, "sort")]
        if not names:
            raise ConfigError("sort needs at least one column name")
        flags = [ascending] * len(names) if isinstance(ascending, bool) else list(ascending)
        if len(flags) != len(names) or not all(isinstance(f, bool) for f in flags):
            raise ConfigError(
                f"ascending must be a bool or one bool per column ({len(names)}), got {ascending!r}"
            )
        order = ", ".join(
            f"{quote_column(n)} {'ASC NULLS LAST' if up else 'DESC NULLS FIRST'}"
            for n, up in zip(names, flags, strict=True)
        )
        return self._wrap(lambda r: r.order(order))

    order_by = sort

    def limit(self, n: int, offset: int = 0) -> DataFrame:
        """At most ``n`` rows, after skipping ``offset`` rows.

        Raises:
            ConfigError: For a negative or non-integer ``n`` or ``offset``.
        """
        for label, value in (("n", n), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"limit {label} must be an integer >= 0, got {value!r}")
        return self._wrap(lambda r: r.limit(n, offset))

    def random_split(self, weights: Sequence[float], seed: int | None = None) -> list[DataFrame]:
        """Split the rows into disjoint parts of about ``weights`` of the rows each.

        Each row draws a number in [0, 1) from a hash of its values, its position among
        identical rows and the seed, computed in SQL, and falls into the part whose share of
        the cumulative weights covers it. So the parts are disjoint and cover every row exactly
        once, and the split is deterministic: the same seed on the same data (and DuckDB
        version) gives the same parts, whatever the row order. Weights that do not add up to 1
        are normalized; with ``seed=None`` a random seed is drawn. The parts stay lazy.

        Args:
            weights: Positive relative sizes, e.g. ``[0.8, 0.2]``.
            seed: Seed of the split.

        Returns:
            One DataFrame per weight.

        Raises:
            ConfigError: For no weights, a weight that is not a positive number, or a
                non-integer seed.

        Example:
            >>> train, test = df.random_split([0.8, 0.2], seed=42)  # doctest: +SKIP
        """
        weights = list(weights)
        if not weights or any(
            isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0
            for w in weights
        ):
            raise ConfigError(f"weights must be positive numbers, got {weights!r}")
        if seed is None:
            seed = secrets.randbelow(2**62)
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer or None, got {seed!r}")
        total = float(sum(weights))
        bounds = [sum(weights[: i + 1]) / total for i in range(len(weights))]
        values = ", ".join(quote_column(c) for c in self.columns)
        draw = (
            f"(hash({_SPLIT_HASH}, row_number() OVER (PARTITION BY {_SPLIT_HASH}), "
            f"{seed % 2**63}::BIGINT) >> 11)::DOUBLE / 9007199254740992.0 AS {_SPLIT_DRAW}"
        )
        drawn = _run(
            lambda: self._relation.select(f"*, hash({values}) AS {_SPLIT_HASH}").select(
                f"* EXCLUDE ({_SPLIT_HASH}), {draw}"
            )
        )
        parts = []
        low = 0.0
        for i, high in enumerate(bounds):
            condition = f"{_SPLIT_DRAW} >= {low!r}::DOUBLE"
            if i < len(bounds) - 1:
                condition += f" AND {_SPLIT_DRAW} < {high!r}::DOUBLE"
            part = drawn.filter(condition).select(f"* EXCLUDE ({_SPLIT_DRAW})")
            parts.append(DataFrame(part, self._session))
            low = high
        return parts

    def sample(self, frac: float | None = None, n: int | None = None) -> DataFrame:
        """A random sample: about ``frac`` of the rows, or ``n`` rows (Snowpark's ``sample``).

        Each call draws anew (as in Snowflake); use :meth:`random_split` with a seed for a
        reproducible split.

        Raises:
            ConfigError: Unless exactly one of ``frac`` (in [0, 1]) and ``n`` (>= 0) is given.
        """
        if (frac is None) == (n is None):
            raise ConfigError("sample() takes exactly one of frac= and n=")
        if frac is not None:
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
                raise ConfigError(f"frac must be a number in [0, 1], got {frac!r}")
            keep = self.random_split([frac, 1 - frac])[0] if 0 < frac < 1 else None
            if keep is not None:
                return keep
            return self if frac == 1 else self.limit(0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"n must be an integer >= 0, got {n!r}")
        return self._wrap(lambda r: r.order("random()").limit(n))

    def subtract(self, other: DataFrame) -> DataFrame:
        """The distinct rows of this DataFrame that are not in ``other`` (SQL ``EXCEPT``, as
        Snowpark's ``subtract``; duplicates are removed).

        Raises:
            ConfigError: If ``other`` is not a DataFrame of the same warehouse.
        """
        if not isinstance(other, DataFrame):
            raise ConfigError(f"subtract() needs a DataFrame, got {type(other).__name__}")
        return self._wrap(lambda r: r.except_(other.relation))

    except_ = subtract

    # -- actions (read rows) ---------------------------------------------------------------

    def collect(self) -> list[Row]:
        """Run the query and return its rows.

        Raises:
            QueryError: If the query fails.
        """
        fields = tuple(self._relation.columns)
        return [Row._make(fields, values) for values in _run(self._relation.fetchall)]

    def first(self, n: int | None = None) -> Row | list[Row] | None:
        """The first row (``None`` if there is none), or with ``n`` a list of the first ``n``."""
        if n is None:
            rows = self.limit(1).collect()
            return rows[0] if rows else None
        return self.limit(n).collect()

    def count(self) -> int:
        """The number of rows.

        Raises:
            QueryError: If the query fails.
        """
        rows = _run(lambda: self._relation.aggregate("count(*)").fetchall())
        return int(rows[0][0])

    def to_pandas(self) -> Any:
        """The rows as a ``pandas.DataFrame``.

        Raises:
            QueryError: If the query fails.
        """
        return _run(self._relation.df)

    def to_arrow(self) -> pa.Table:
        """The rows as a ``pyarrow.Table`` (not in Snowpark).

        Raises:
            QueryError: If the query fails.
        """
        return _run(self._relation.to_arrow_table)

    def show(self, n: int = 10) -> None:
        """Print the first ``n`` rows as a table.

        Raises:
            QueryError: If the query fails.
        """
        print(_run(lambda: str(self.limit(n)._relation)))

    @property
    def write(self) -> DataFrameWriter:
        """A writer into a table: ``df.write.mode("overwrite").save_as_table("T")``."""
        return DataFrameWriter(self)

    # Snowpark's camel-case aliases
    randomSplit = random_split
    toPandas = to_pandas
    orderBy = sort
    selectExpr = select_expr


class DataFrameWriter:
    """Writes a DataFrame into a table of its session, with Snowpark's save modes.

    ``"errorifexists"`` (the default) refuses an existing table, ``"append"`` adds the rows
    (matching columns by name), ``"overwrite"`` replaces the table, ``"truncate"`` keeps the
    table (and its column types) and replaces its rows, ``"ignore"`` leaves an existing table
    alone. A missing table is created in every mode. Each write is one DuckDB transaction.

    Args:
        dataframe: What to write.
    """

    def __init__(self, dataframe: DataFrame) -> None:
        self._dataframe = dataframe
        self._mode = "errorifexists"

    def mode(self, save_mode: str) -> DataFrameWriter:
        """Set the save mode and return this writer.

        Raises:
            ConfigError: For an unknown mode.
        """
        self._mode = _save_mode(save_mode)
        return self

    def save_as_table(self, table_name: str | Sequence[str], *, mode: str | None = None) -> None:
        """Write the rows into ``table_name`` (``"T"``, ``"schema.T"`` or ``["schema", "T"]``).

        Args:
            table_name: The table.
            mode: A save mode for this call (default: the one set by :meth:`mode`).

        Raises:
            ConfigError: For an unknown mode or an empty name.
            DatasetExistsError: In mode ``"errorifexists"`` when the table exists.
            QueryError: If the write fails (for instance columns that do not match on append);
                the table keeps its previous content.
        """
        name = table_name if isinstance(table_name, str) else ".".join(table_name)
        save_mode = self._mode if mode is None else _save_mode(mode)
        session = self._dataframe.session
        if save_mode == "errorifexists" and session.has_table(name):
            raise DatasetExistsError(
                f"table {name!r} already exists; use df.write.mode('overwrite') (or 'append', "
                "'truncate', 'ignore')"
            )
        session.create_table(name, self._dataframe, mode=_SESSION_MODES[save_mode])

    saveAsTable = save_as_table


def _save_mode(value: Any) -> str:
    mode = value.lower() if isinstance(value, str) else value
    if mode == "error":
        mode = "errorifexists"
    if mode not in SAVE_MODES:
        raise ConfigError(f"save mode must be one of {SAVE_MODES}, got {value!r}")
    return str(mode)


def _unwrap(value: Any) -> Any:
    return value.relation if isinstance(value, DataFrame) else value


def _run(call: Callable[[], _T]) -> _T:
    """Run a DuckDB call, turning its errors into :class:`QueryError` with DuckDB's message."""
    try:
        return call()
    except duckdb.Error as exc:
        raise QueryError(f"query failed: {exc}") from exc
