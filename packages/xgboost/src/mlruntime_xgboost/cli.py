"""``mlruntime train xgboost``: train an XGBoost model from the command line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "parse_param"]


def parse_param(text: str) -> tuple[str, Any]:
    """Parse ``k=v`` with ``v`` read as JSON when it parses (numbers, booleans), else a string.

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


def main(argv: Sequence[str]) -> int:
    """Run the command; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="mlruntime train xgboost",
        description="Train XGBoost on Parquet/CSV files or a warehouse table.",
    )
    parser.add_argument("--data", required=True, help="path, glob, URI, or a table name")
    parser.add_argument("--label", required=True, help="label column")
    parser.add_argument("--features", nargs="+", default=None, help="feature columns")
    parser.add_argument("--workers", type=int, default=-1, help="workers (-1: auto)")
    parser.add_argument("--cpus-per-worker", type=float, default=-1)
    parser.add_argument("--rounds", type=int, default=100, help="boosting rounds")
    parser.add_argument("--objective", default="reg:squarederror")
    parser.add_argument(
        "--param",
        action="append",
        type=parse_param,
        default=[],
        metavar="KEY=VALUE",
        help="an XGBoost parameter (repeatable)",
    )
    parser.add_argument("--database", default=None, help="warehouse file for --data TABLE")
    parser.add_argument("--output", required=True, help="model file (.json or .ubj)")
    args = parser.parse_args(list(argv))

    from mlruntime.connector import DataConnector
    from mlruntime.session import Session, get_active_session
    from mlruntime_xgboost.estimator import XGBEstimator, XGBScalingConfig

    session = Session(args.database) if args.database else get_active_session()
    if session.has_table(args.data):
        data = DataConnector.from_dataframe(session.table(args.data))
    else:
        data = DataConnector.from_sources(args.data)
    estimator = XGBEstimator(
        n_estimators=args.rounds,
        objective=args.objective,
        params=dict(args.param),
        scaling_config=XGBScalingConfig(args.workers, args.cpus_per_worker),
    )
    estimator.fit(data, args.features, args.label)
    estimator.save_model(args.output)
    history = estimator.get_eval_results().get("train", {})
    last = {k: v[-1] for k, v in history.items()}
    print(f"saved {args.output} ({estimator.n_estimators} rounds; train {last})")
    return 0
