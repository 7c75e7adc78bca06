"""The four first-party plugins are discovered through their installed entry points."""

from __future__ import annotations

import importlib.metadata

import mlruntime
from mlruntime.plugins.registry import ENTRY_POINT_GROUP

FIRST_PARTY = ("xgboost", "lightgbm", "pytorch", "tensorflow")


def test_first_party_entry_points_are_installed() -> None:
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    for name in FIRST_PARTY:
        assert eps[name] == f"mlruntime_{name}.hooks"


def test_first_party_plugins_are_ok_with_matching_versions() -> None:
    by_name = {p.name: p for p in mlruntime.list_plugins()}
    for name in FIRST_PARTY:
        info = by_name[name]
        assert info.ok, f"{name}: {info.status} {info.reason}"
        assert info.version == importlib.metadata.version(f"mlruntime-{name}")
        assert info.api_version == 1


def test_plugins_declare_a_bounded_core_range_that_admits_this_core() -> None:
    from packaging.requirements import Requirement

    core_version = importlib.metadata.version("mlruntime")
    for name in FIRST_PARTY:
        requires = [Requirement(r) for r in importlib.metadata.requires(f"mlruntime-{name}") or []]
        core_req = next(r for r in requires if r.name == "mlruntime")
        operators = {spec.operator for spec in core_req.specifier}
        assert {">=", "<"} <= operators, f"{name}: {core_req} is not a bounded range"
        assert core_req.specifier.contains(core_version), f"{name}: {core_req} vs {core_version}"
