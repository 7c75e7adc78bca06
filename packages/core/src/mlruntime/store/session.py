"""The embedded warehouse: a DuckDB database under ``MLRUNTIME_HOME`` with a small table API.

``get_active_session().table("t")`` returns a lazy, Snowpark-flavoured :class:`DataFrame` that
``DataConnector.from_dataframe`` accepts; nothing is read until an output asks for rows.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from mlruntime._env import env_flag
from mlruntime.errors import ConfigError, DatasetExistsError, QueryError, TableNotFoundError
from mlruntime.store.dataframe import DataFrame
from mlruntime.store.storage import HOME_ENV, WRITE_MODES, mlruntime_home, private_files

__all__ = ["HOME_ENV", "TABLE_WRITE_MODES", "Session", "get_active_session", "mlruntime_home"]

TABLE_WRITE_MODES = (*WRITE_MODES, "truncate", "ignore")
"""Modes of :meth:`Session.create_table`: the sinks' modes plus ``truncate`` and ``ignore``."""

SNOWFLAKE_IDENTIFIERS_ENV = "MLRUNTIME_SNOWFLAKE_IDENTIFIERS"
"""Set to ``1`` to name columns of in-memory data as Snowflake shows them (see :class:`Session`)."""

_UNQUOTED = re.compile(r"[A-Z_][A-Z0-9_$]*")

_INTERNAL_PREFIX = "__mlruntime_"
"""Names of the session's own temporary tables and views (not listed by ``tables()``)."""


def quote_identifier(name: str) -> str:
    """Quote a (possibly ``schema.table``) identifier for DuckDB.

    Raises:
        ConfigError: If the name is empty.
    """
    if not name or not name.strip():
        raise ConfigError("a table name must not be empty")
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


class Session:
    """A DuckDB warehouse connection.

    ``table``, ``sql`` and ``create_dataframe`` return lazy :class:`DataFrame` objects with
    Snowpark's method names (``collect``, ``random_split``, ``write.save_as_table`` ...); what
    a DataFrame does not define is forwarded to its DuckDB relation, so DuckDB's own API
    (``fetchall()``, ``to_arrow_table()``, ``df()``) keeps working on them.

    Args:
        path: Database file; ``None`` for ``$MLRUNTIME_HOME/warehouse.duckdb``, ``":memory:"``
            for an in-memory database.
        read_only: Open the file read-only (several processes may then share it).
        snowflake_identifiers: Name the columns that ``create_dataframe`` and ``write_pandas``
            bring in as Snowpark shows them: a name that is not an upper-case identifier keeps
            its case in Snowflake and is written with its quotes, so pandas column ``target``
            becomes ``'"target"'`` (``C1`` stays ``C1``). Notebooks that index such columns as
            ``'"target"'`` then port unchanged. Default: the ``MLRUNTIME_SNOWFLAKE_IDENTIFIERS``
            environment variable (``1``), else off (names kept as given).

    Example:
        >>> session = Session(":memory:")
        >>> _ = session.create_table("t", {"x": [1, 2, 3]})
        >>> session.table("t").count()
        3
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        read_only: bool = False,
        snowflake_identifiers: bool | None = None,
    ):
        self.path = str(mlruntime_home() / "warehouse.duckdb") if path is None else os.fspath(path)
        if snowflake_identifiers is None:
            snowflake_identifiers = env_flag(SNOWFLAKE_IDENTIFIERS_ENV)
        self.snowflake_identifiers = snowflake_identifiers
        # the warehouse (and the WAL and spill files DuckDB makes beside it when queries write)
        # is the user's only inside mlruntime's home
        with private_files(self.path):
            self.connection = duckdb.connect(self.path, read_only=read_only)
        self._lock = threading.RLock()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()

    def __repr__(self) -> str:
        return f"Session({self.path!r})"

    def tables(self) -> list[str]:
        """Names of the tables and views in the main schema (not the session's own temporary
        tables behind ``create_dataframe``)."""
        rows = self.connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND NOT starts_with(table_name, ?) ORDER BY table_name",
            [_INTERNAL_PREFIX],
        ).fetchall()
        return [r[0] for r in rows]

    def has_table(self, name: str) -> bool:
        """Whether ``name`` is a table or view."""
        try:
            self.connection.table(name)
        except duckdb.Error:
            return False
        return True

    def table(self, name: str | Sequence[str]) -> DataFrame:
        """A lazy DataFrame over table ``name`` (``"t"``, ``"schema.t"`` or ``["schema", "t"]``).

        Raises:
            TableNotFoundError: If there is no such table (the message lists the tables).
        """
        text = name if isinstance(name, str) else ".".join(name)
        try:
            return DataFrame(self.connection.table(text), self)
        except duckdb.Error as exc:
            raise TableNotFoundError(
                f"table {text!r} does not exist in {self.path}; tables: {self.tables() or 'none'}"
            ) from exc

    def sql(self, query: str, params: Any = None) -> DataFrame:
        """A lazy DataFrame over a SQL query.

        A ``SELECT`` runs when rows are asked for; DuckDB runs other statements (``CREATE``,
        ``INSERT`` ...) at once, and their DataFrame holds DuckDB's status rows (in Snowpark
        they would run on ``collect()``, which here only returns those rows).

        Raises:
            QueryError: If DuckDB rejects the query (its message is kept).
        """
        if not isinstance(query, str) or not query.strip():
            raise QueryError("the SQL query is empty")
        try:
            with private_files(self.path):
                return DataFrame(self.connection.sql(query, params=params), self)
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {exc}\n  query: {query}") from exc

    def create_dataframe(
        self, data: Any, schema: Sequence[str] | pa.Schema | None = None
    ) -> DataFrame:
        """A DataFrame over in-memory data, copied into a temporary table of this session.

        The table lives as long as the session (temporary tables are dropped when it closes),
        so the DataFrame stays valid whatever happens to ``data``.

        Args:
            data: A pandas/polars frame, a ``pyarrow.Table``/``RecordBatch``, a dict of columns,
                or a list of rows: tuples/lists, dicts, :class:`Row` objects or single values.
            schema: Column names (a list; the columns of tuples are otherwise named ``_1``,
                ``_2`` ... as in Snowpark), or a ``pyarrow.Schema`` giving names and types.

        Returns:
            A DataFrame over the temporary table.

        Raises:
            ConfigError: For data of another kind, rows of different lengths, or a schema
                whose length does not match the columns.
        """
        table = _rows_to_arrow(data, schema)
        if self.snowflake_identifiers:
            table = table.rename_columns([snowflake_column_name(c) for c in table.column_names])
        name = f"{_INTERNAL_PREFIX}df_{uuid.uuid4().hex}"
        con = self.connection
        with self._lock:
            view = f"{_INTERNAL_PREFIX}incoming_df"
            con.register(view, table)
            try:
                con.execute(f"CREATE TEMP TABLE {quote_identifier(name)} AS SELECT * FROM {view}")
            except duckdb.Error as exc:
                raise QueryError(f"cannot create a DataFrame from the data: {exc}") from exc
            finally:
                con.unregister(view)
        return DataFrame(con.table(name), self)

    def write_pandas(
        self,
        df: Any,
        table_name: str,
        *,
        auto_create_table: bool = False,
        overwrite: bool = False,
    ) -> DataFrame:
        """Write a pandas DataFrame (or any frame ``create_table`` takes) into a table.

        Snowpark's signature, in part: without ``overwrite`` the rows are appended (columns
        matched by name); with it they replace the table's rows (with ``auto_create_table``
        the table itself is replaced, taking the frame's columns).

        Args:
            df: The frame.
            table_name: The table.
            auto_create_table: Create the table if it does not exist.
            overwrite: Replace the rows instead of appending.

        Returns:
            A DataFrame over the table.

        Raises:
            TableNotFoundError: If the table does not exist and ``auto_create_table`` is False.
            QueryError: If the rows do not fit the table.
        """
        with self._lock:
            if not self.has_table(table_name):
                if not auto_create_table:
                    raise TableNotFoundError(
                        f"table {table_name!r} does not exist; pass auto_create_table=True to "
                        "create it"
                    )
                mode = "error"
            elif overwrite:
                mode = "overwrite" if auto_create_table else "truncate"
            else:
                mode = "append"
            if self.snowflake_identifiers:
                df = _with_snowflake_names(_as_arrow(df))
            return self.create_table(table_name, df, mode=mode)

    def create_table(self, name: str, data: Any, *, mode: str = "error") -> DataFrame:
        """Create (or replace, or append to) table ``name`` from data, atomically.

        Args:
            name: Table name.
            data: A pandas/polars/Arrow frame, a dict of columns, a :class:`DataFrame` (of this
                session: written in SQL, the rows never leave DuckDB), a DuckDB relation or a
                DataConnector.
            mode: ``"error"`` if the table exists, ``"overwrite"`` (replace the table),
                ``"append"`` (add rows, columns matched by name), ``"truncate"`` (keep the
                table and its column types, replace its rows) or ``"ignore"`` (leave an
                existing table as it is). A missing table is created in every mode.

        Returns:
            A DataFrame over the table.

        Raises:
            ConfigError: For an unknown mode.
            DatasetExistsError: If the table exists and mode is ``"error"``.
            QueryError: If the write fails; the table keeps its previous content.
        """
        with private_files(self.path):
            return self._create_table(name, data, mode)

    def _create_table(self, name: str, data: Any, mode: str) -> DataFrame:
        if mode not in TABLE_WRITE_MODES:
            raise ConfigError(f"mode must be one of {TABLE_WRITE_MODES}, got {mode!r}")
        target = quote_identifier(name)
        with self._lock:
            exists = self.has_table(name)
            if exists and mode == "error":
                raise DatasetExistsError(
                    f"table {name!r} already exists; pass mode='overwrite' or mode='append'"
                )
            if exists and mode == "ignore":
                return self.table(name)
            if isinstance(data, DataFrame) and data.session is self:
                incoming: Any = data.relation  # read by DuckDB itself, inside the transaction
            else:
                incoming = _as_arrow(data)
            con = self.connection
            view = f"{_INTERNAL_PREFIX}incoming"
            staged = quote_identifier(f"{_INTERNAL_PREFIX}staged")
            con.register(view, incoming)
            try:
                con.execute("BEGIN TRANSACTION")
                if exists and mode == "append":
                    con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {view}")
                elif exists and mode == "truncate":  # staged first: the rows may read the table
                    con.execute(f"CREATE TEMP TABLE {staged} AS SELECT * FROM {view}")
                    con.execute(f"DELETE FROM {target}")
                    con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {staged}")
                    con.execute(f"DROP TABLE {staged}")
                else:
                    con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM {view}")
                con.execute("COMMIT")
            except duckdb.Error as exc:
                con.execute("ROLLBACK")
                raise QueryError(f"cannot write table {name!r}: {exc}") from exc
            finally:
                con.unregister(view)
        return self.table(name)


def snowflake_column_name(name: str) -> str:
    """How Snowpark shows a column made from ``name``: as is when it is an unquoted Snowflake
    identifier (upper case, digits, ``_``, ``$``), else with its double quotes (``'"target"'``)."""
    if _UNQUOTED.fullmatch(name) or (len(name) > 1 and name[0] == name[-1] == '"'):
        return name
    return '"' + name.replace('"', '""') + '"'


def _with_snowflake_names(data: pa.Table | pa.RecordBatchReader) -> Any:
    names = [snowflake_column_name(c) for c in data.schema.names]
    if isinstance(data, pa.Table):
        return data.rename_columns(names)
    schema = pa.schema([f.with_name(n) for f, n in zip(data.schema, names, strict=True)])
    return pa.RecordBatchReader.from_batches(
        schema, (pa.RecordBatch.from_arrays(b.columns, schema=schema) for b in data)
    )


def _as_arrow(data: Any) -> pa.Table | pa.RecordBatchReader:
    if isinstance(data, (pa.Table, pa.RecordBatchReader)):
        return data
    if isinstance(data, dict):
        return pa.table(data)
    if isinstance(data, duckdb.DuckDBPyRelation):
        return data.to_arrow_table()
    if isinstance(data, DataFrame):
        return data.to_arrow()
    from mlruntime.data.connector import DataConnector

    if not isinstance(data, DataConnector):
        data = DataConnector.from_dataframe(data)
    return data.to_arrow()


def _rows_to_arrow(data: Any, schema: Sequence[str] | pa.Schema | None) -> pa.Table:
    """``create_dataframe``'s data as an Arrow table, named (and typed) by ``schema``."""
    if (
        schema is not None
        and not isinstance(schema, pa.Schema)
        and (isinstance(schema, str) or not all(isinstance(n, str) for n in schema))
    ):
        raise ConfigError(
            f"schema must be a list of column names or a pyarrow.Schema, got {schema!r} "
            "(Snowpark StructType schemas are not supported)"
        )
    if isinstance(data, (list, tuple)):
        table = _list_to_arrow(list(data), schema)
    elif isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    elif isinstance(data, pa.RecordBatchReader):
        table = data.read_all()
    elif isinstance(data, pa.Table):
        table = data
    elif isinstance(data, dict):
        table = pa.table(data)
    else:
        module, kind = type(data).__module__, type(data).__name__
        if module.startswith("pandas") and kind == "DataFrame":
            table = pa.Table.from_pandas(data, preserve_index=False)
        elif module.startswith("polars") and kind in ("DataFrame", "LazyFrame"):
            table = (data.collect() if kind == "LazyFrame" else data).to_arrow()
        else:
            raise ConfigError(
                f"create_dataframe cannot read a {module}.{kind}; pass a pandas/polars frame, a "
                "pyarrow Table, a dict of columns or a list of rows"
            )
    if schema is None:
        return table
    names = list(schema.names) if isinstance(schema, pa.Schema) else list(schema)
    if len(names) != table.num_columns:
        raise ConfigError(
            f"schema names {len(names)} columns ({names}) but the data has "
            f"{table.num_columns} ({table.column_names})"
        )
    table = table.rename_columns(names)
    return table.cast(schema) if isinstance(schema, pa.Schema) else table


def _list_to_arrow(rows: list[Any], schema: Sequence[str] | pa.Schema | None) -> pa.Table:
    if rows and all(isinstance(r, dict) for r in rows):
        return pa.Table.from_pylist(rows)
    if rows and not isinstance(rows[0], (tuple, list)):
        rows = [(r,) for r in rows]  # a list of single values: one column
    width = len(rows[0]) if rows else (len(schema) if schema is not None else 0)
    if any(not isinstance(r, (tuple, list)) or len(r) != width for r in rows):
        raise ConfigError(f"every row must be a tuple or list of {width} values")
    if schema is not None:
        names = list(schema.names) if isinstance(schema, pa.Schema) else list(schema)
    else:
        fields = getattr(rows[0], "_fields", ()) if rows else ()
        names = list(fields) if len(fields) == width else [f"_{i + 1}" for i in range(width)]
    if len(names) != width:
        raise ConfigError(f"schema names {len(names)} columns ({names}) but rows have {width}")
    types = list(schema.types) if isinstance(schema, pa.Schema) else [None] * width
    try:
        columns = [pa.array([r[i] for r in rows], type=types[i]) for i in range(width)]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ConfigError(f"cannot make columns of the rows: {exc}") from exc
    return pa.Table.from_arrays(columns, names=names)


_active: Session | None = None
_active_lock = threading.Lock()


def get_active_session() -> Session:
    """The default session: ``$MLRUNTIME_HOME/warehouse.duckdb``, opened once per process
    (``MLRUNTIME_SNOWFLAKE_IDENTIFIERS=1`` turns Snowflake's column naming on, see
    :class:`Session`)."""
    global _active
    with _active_lock:
        home_db = str(mlruntime_home() / "warehouse.duckdb")
        quoted = env_flag(SNOWFLAKE_IDENTIFIERS_ENV)
        if (
            _active is None
            or _active.path != home_db
            or _active.snowflake_identifiers != quoted
            or _is_closed(_active)
        ):
            _active = Session(home_db, snowflake_identifiers=quoted)
        return _active


def _is_closed(session: Session) -> bool:
    try:
        session.connection.execute("SELECT 1").fetchall()
    except duckdb.Error:
        return True
    return False
