"""``mlruntime train xgboost``: train an XGBoost model from the command line."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str]) -> int:
    """Run ``mlruntime train xgboost ...``; returns the exit code."""
    from mlruntime.training import load_training_data, train_command_parser
    from mlruntime_xgboost.estimator import XGBEstimator, XGBScalingConfig

    args = train_command_parser("xgboost", "reg:squarederror").parse_args(list(argv))
    estimator = XGBEstimator(
        n_estimators=args.rounds,
        objective=args.objective,
        params=dict(args.param),
        scaling_config=XGBScalingConfig(args.workers, args.cpus_per_worker),
    )
    estimator.fit(load_training_data(args.data, args.database), args.features, args.label)
    estimator.save_model(args.output)
    history = estimator.get_eval_results().get("train", {})
    last = {k: v[-1] for k, v in history.items()}
    print(f"saved {args.output} ({estimator.n_estimators} rounds; train {last})")
    return 0
