"""The embedded warehouse: a DuckDB database under ``MLRUNTIME_HOME`` with a small table API.

``get_active_session().table("t")`` returns a DuckDB relation, a DataFrame that
``DataConnector.from_dataframe`` accepts; nothing is read until an output asks for rows.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import duckdb
import pyarrow as pa

from mlruntime.errors import ConfigError, DatasetExistsError, QueryError, TableNotFoundError
from mlruntime.store.storage import HOME_ENV, WRITE_MODES, mlruntime_home

__all__ = ["HOME_ENV", "Session", "get_active_session", "mlruntime_home"]


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

    Args:
        path: Database file; ``None`` for ``$MLRUNTIME_HOME/warehouse.duckdb``, ``":memory:"``
            for an in-memory database.
        read_only: Open the file read-only (several processes may then share it).

    Example:
        >>> session = Session(":memory:")
        >>> _ = session.create_table("t", {"x": [1, 2, 3]})
        >>> session.table("t").to_arrow_table().num_rows
        3
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, read_only: bool = False):
        self.path = str(mlruntime_home() / "warehouse.duckdb") if path is None else os.fspath(path)
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
        """Names of the tables and views in the main schema."""
        rows = self.connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "ORDER BY table_name"
        ).fetchall()
        return [r[0] for r in rows]

    def has_table(self, name: str) -> bool:
        """Whether ``name`` is a table or view."""
        try:
            self.connection.table(name)
        except duckdb.Error:
            return False
        return True

    def table(self, name: str) -> duckdb.DuckDBPyRelation:
        """A lazy relation over table ``name``.

        Raises:
            TableNotFoundError: If there is no such table (the message lists the tables).
        """
        try:
            return self.connection.table(name)
        except duckdb.Error as exc:
            raise TableNotFoundError(
                f"table {name!r} does not exist in {self.path}; tables: {self.tables() or 'none'}"
            ) from exc

    def sql(self, query: str, params: Any = None) -> duckdb.DuckDBPyRelation:
        """A lazy relation over a SQL query.

        Raises:
            QueryError: If DuckDB rejects the query (its message is kept).
        """
        if not isinstance(query, str) or not query.strip():
            raise QueryError("the SQL query is empty")
        try:
            return self.connection.sql(query, params=params)
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {exc}\n  query: {query}") from exc

    def create_table(self, name: str, data: Any, *, mode: str = "error") -> duckdb.DuckDBPyRelation:
        """Create (or replace, or append to) table ``name`` from data, atomically.

        Args:
            name: Table name.
            data: A pandas/polars/Arrow frame, a dict of columns, a DuckDB relation or a
                DataConnector.
            mode: ``"error"`` if the table exists, ``"overwrite"`` or ``"append"``.

        Returns:
            A relation over the table.

        Raises:
            ConfigError: For an unknown mode.
            DatasetExistsError: If the table exists and mode is ``"error"``.
        """
        if mode not in WRITE_MODES:
            raise ConfigError(f"mode must be one of {WRITE_MODES}, got {mode!r}")
        table = _as_arrow(data)
        target = quote_identifier(name)
        with self._lock:
            exists = self.has_table(name)
            if exists and mode == "error":
                raise DatasetExistsError(
                    f"table {name!r} already exists; pass mode='overwrite' or mode='append'"
                )
            con = self.connection
            view = "__mlruntime_incoming"
            con.register(view, table)
            try:
                con.execute("BEGIN TRANSACTION")
                if exists and mode == "append":
                    con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {view}")
                else:
                    con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM {view}")
                con.execute("COMMIT")
            except duckdb.Error as exc:
                con.execute("ROLLBACK")
                raise QueryError(f"cannot write table {name!r}: {exc}") from exc
            finally:
                con.unregister(view)
        return self.table(name)


def _as_arrow(data: Any) -> pa.Table | pa.RecordBatchReader:
    if isinstance(data, (pa.Table, pa.RecordBatchReader)):
        return data
    if isinstance(data, dict):
        return pa.table(data)
    if isinstance(data, duckdb.DuckDBPyRelation):
        return data.to_arrow_table()
    from mlruntime.data.connector import DataConnector

    if not isinstance(data, DataConnector):
        data = DataConnector.from_dataframe(data)
    return data.to_arrow()


_active: Session | None = None
_active_lock = threading.Lock()


def get_active_session() -> Session:
    """The default session: ``$MLRUNTIME_HOME/warehouse.duckdb``, opened once per process."""
    global _active
    with _active_lock:
        home_db = str(mlruntime_home() / "warehouse.duckdb")
        if _active is None or _active.path != home_db or _is_closed(_active):
            _active = Session(home_db)
        return _active


def _is_closed(session: Session) -> bool:
    try:
        session.connection.execute("SELECT 1").fetchall()
    except duckdb.Error:
        return True
    return False
