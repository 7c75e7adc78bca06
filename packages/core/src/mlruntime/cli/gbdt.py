"""``mlruntime train <plugin>`` and ``mlruntime predict <plugin>`` for every GBDT estimator a
plugin registers (XGBoost, LightGBM, or a third party's): one implementation, no per-plugin copy.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from mlruntime.errors import ConfigError

__all__ = ["load_data", "parse_param", "predict_main", "train_main"]


def parse_param(text: str) -> tuple[str, Any]:
    """Parse a ``KEY=VALUE`` CLI parameter; the value is read as JSON when it parses
    (numbers, booleans, lists), else kept as a string.

    Raises:
        argparse.ArgumentTypeError: Without ``=``.
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param needs KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def load_data(data: str, database: str | None = None) -> Any:
    """A DataConnector over the warehouse table named ``data`` if there is one, else over the
    files/URI ``data``.

    Raises:
        SourceError: If ``data`` is neither a table nor a readable path.
    """
    from mlruntime.data.connector import DataConnector
    from mlruntime.store.session import Session, get_active_session

    session = Session(database) if database else get_active_session()
    if session.has_table(data):
        return DataConnector.from_dataframe(session.table(data))
    return DataConnector.from_sources(data)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="path, glob, URI, or a warehouse table")
    parser.add_argument("--features", nargs="+", default=None, help="feature columns")
    parser.add_argument("--workers", type=int, default=-1, help="workers (-1: auto)")
    parser.add_argument("--cpus-per-worker", type=float, default=-1)
    parser.add_argument("--database", default=None, help="warehouse file for --data TABLE")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def _estimator_class(name: str) -> Any:
    from mlruntime.plugins.registry import get_registry
    from mlruntime.train.gbdt import GBDTEstimator

    registry = get_registry()
    estimators = {
        spec.framework or spec.name: spec.name
        for spec in registry.distributors().values()
        if spec.role == "estimator"
    }
    if name not in estimators:
        raise ConfigError(f"no GBDT estimator plugin {name!r}; installed: {sorted(estimators)}")
    cls = registry.load("distributor", estimators[name])
    if not (isinstance(cls, type) and issubclass(cls, GBDTEstimator)):
        raise ConfigError(f"{cls!r} of plugin {name!r} is not a GBDT estimator")
    return cls


def gbdt_plugins() -> list[str]:
    """The frameworks of the registered estimator plugins (without importing them)."""
    from mlruntime.plugins.registry import get_registry

    specs = get_registry().distributors().values()
    return sorted({s.framework or s.name for s in specs if s.role == "estimator"})


def _scaling(cls: Any, args: argparse.Namespace) -> Any:
    return cls.scaling_config_type(args.workers, args.cpus_per_worker)


def train_main(name: str, argv: Sequence[str]) -> int:
    """``mlruntime train <name> --data ... --label ... --output MODEL``: fit and save a model.

    Returns:
        The exit code.

    Raises:
        ConfigError: For an unknown plugin; other mlruntime errors of ``fit``.
    """
    cls = _estimator_class(name)
    parser = argparse.ArgumentParser(
        prog=f"mlruntime train {name}",
        description=f"Train {name} on Parquet/CSV files or a warehouse table.",
    )
    _common(parser)
    parser.add_argument("--label", required=True, help="label column")
    parser.add_argument("--rounds", type=int, default=100, help="boosting rounds")
    parser.add_argument("--objective", default=cls.default_objective)
    parser.add_argument(
        "--param",
        action="append",
        type=parse_param,
        default=[],
        metavar="KEY=VALUE",
        help=f"a {name} parameter (repeatable)",
    )
    parser.add_argument("--output", required=True, help="model file to write")
    args = parser.parse_args(list(argv))
    estimator = cls(
        n_estimators=args.rounds,
        objective=args.objective,
        params=dict(args.param),
        scaling_config=_scaling(cls, args),
        verbose=not args.quiet,
    )
    estimator.fit(load_data(args.data, args.database), args.features, args.label)
    estimator.save_model(args.output)
    history = estimator.get_eval_results().get("train", {})
    last = {k: v[-1] for k, v in history.items()}
    print(f"saved {args.output} ({estimator.n_estimators} rounds; train {last})")
    return 0


def predict_main(name: str, argv: Sequence[str]) -> int:
    """``mlruntime predict <name> --model MODEL --data ... (--output DIR | --table NAME)``:
    score data on every worker into a Parquet folder or a warehouse table, all or nothing.

    Returns:
        The exit code.

    Raises:
        ConfigError: For an unknown plugin; other mlruntime errors of ``predict``.
    """
    from mlruntime.store.session import Session
    from mlruntime.store.sinks import DuckDBTableSink, ParquetSink

    cls = _estimator_class(name)
    parser = argparse.ArgumentParser(
        prog=f"mlruntime predict {name}",
        description=f"Score data with a saved {name} model, on every worker.",
    )
    _common(parser)
    parser.add_argument("--model", required=True, help="model file saved by train/save_model")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--output", help="Parquet folder to write the predictions to")
    out.add_argument("--table", help="warehouse table to write the predictions to")
    parser.add_argument("--key", nargs="+", default=[], help="columns written beside them")
    parser.add_argument("--output-col", default="prediction", help="prediction column name")
    parser.add_argument("--mode", choices=("error", "overwrite", "append"), default="error")
    args = parser.parse_args(list(argv))
    estimator = cls(scaling_config=_scaling(cls, args), verbose=not args.quiet)
    estimator.load_model(args.model)
    data = load_data(args.data, args.database)
    if args.output:
        sink: Any = ParquetSink(args.output, mode=args.mode)
    else:
        session = Session(args.database) if args.database else None
        sink = DuckDBTableSink(args.table, session=session, mode=args.mode)
    estimator.predict(data, args.features, sink=sink, key_cols=args.key, output_col=args.output_col)
    where = args.output or f"table {args.table}"
    print(f"wrote predictions of {data.count_rows()} rows to {where}")
    return 0
