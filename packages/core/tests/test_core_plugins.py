"""Plugin discovery: good, broken, incompatible and conflicting plugins, found through real
``importlib.metadata`` distributions written to a temporary folder on ``sys.path``."""

from __future__ import annotations

import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest

from mlruntime.errors import PluginError, PluginNotFoundError, PluginWarning
from mlruntime.plugins.hookspecs import (
    AdapterSpec,
    CommandSpec,
    DistributorSpec,
    SourceSpec,
    hookimpl,
)
from mlruntime.plugins.registry import ENTRY_POINT_GROUP, PluginRegistry

GOOD_HOOKS = """
from mlruntime.plugins.hookspecs import AdapterSpec, SourceSpec, hookimpl

MLRUNTIME_PLUGIN_API = 1

@hookimpl
def mlruntime_register_adapters():
    return [AdapterSpec("to_{name}_list", "{module}:to_list", description="rows as lists")]

@hookimpl
def mlruntime_register_sources():
    return [SourceSpec("{name}_source", "{module}:open_source", suffixes=(".{name}",))]

def to_list(table):
    return table.to_pylist()

def open_source(location):
    return location
"""


def make_distribution(
    root: Path, dist: str, entry_name: str, module: str, source: str, version: str = "1.0"
) -> None:
    """Write a module and a real ``.dist-info`` declaring it as an mlruntime plugin."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_name} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path for fake distributions; their modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("fakeplug_"):
            del sys.modules[name]


def _info(registry: PluginRegistry, name: str):
    return next(p for p in registry.plugins() if p.name == name)


def test_good_plugin_is_discovered_with_distribution_and_provides(site: Path) -> None:
    make_distribution(
        site,
        "fake-good",
        "good",
        "fakeplug_good",
        GOOD_HOOKS.format(name="good", module="fakeplug_good"),
        version="2.3.1",
    )
    registry = PluginRegistry()
    info = _info(registry, "good")
    assert info.status == "ok"
    assert (info.distribution, info.version) == ("fake-good", "2.3.1")
    assert info.provides == {"adapter": ["to_good_list"], "source": ["good_source"]}
    import pyarrow as pa

    to_list = registry.load("adapter", "to_good_list")
    assert to_list(pa.table({"a": [1, 2]})) == [{"a": 1}, {"a": 2}]
    assert registry.sources()["good_source"].suffixes == (".good",)


def test_plugin_failing_to_import_is_skipped_and_others_keep_working(site: Path) -> None:
    make_distribution(site, "fake-bad", "bad", "fakeplug_bad", "import no_such_module_xyz\n")
    make_distribution(
        site,
        "fake-good",
        "good",
        "fakeplug_good",
        GOOD_HOOKS.format(name="good", module="fakeplug_good"),
    )
    registry = PluginRegistry()
    with pytest.warns(PluginWarning, match=r"'bad' \(distribution fake-bad 1.0\) skipped"):
        plugins = registry.plugins()
    bad = next(p for p in plugins if p.name == "bad")
    assert bad.status == "broken"
    assert "ModuleNotFoundError" in bad.reason and "no_such_module_xyz" in bad.reason
    assert _info(registry, "good").ok
    assert "to_good_list" in registry.adapters()


def test_plugin_raising_in_a_hook_is_skipped_and_provides_nothing(site: Path) -> None:
    source = GOOD_HOOKS.format(name="boom", module="fakeplug_boom") + textwrap.dedent(
        """
        @hookimpl
        def mlruntime_register_commands():
            raise RuntimeError("kaboom")
        """
    )
    make_distribution(site, "fake-boom", "boom", "fakeplug_boom", source)
    registry = PluginRegistry()
    with pytest.warns(PluginWarning, match="kaboom"):
        info = _info(registry, "boom")
    assert info.status == "broken"
    assert "mlruntime_register_commands() raised RuntimeError: kaboom" in info.reason
    # Nothing it returned from its other hooks leaks into the registry.
    assert "to_boom_list" not in registry.adapters()
    with pytest.raises(PluginNotFoundError):
        registry.get("adapter", "to_boom_list")


@pytest.mark.parametrize(
    ("declaration", "expected"),
    [
        ("MLRUNTIME_PLUGIN_API = 99\n", "written for plugin API 99, this core implements 1"),
        ("", "declares no MLRUNTIME_PLUGIN_API"),
    ],
)
def test_incompatible_plugin_api_is_reported(site: Path, declaration: str, expected: str) -> None:
    make_distribution(site, "fake-old", "old", "fakeplug_old", declaration + "X = 1\n")
    registry = PluginRegistry()
    with pytest.warns(PluginWarning, match="skipped"):
        info = _info(registry, "old")
    assert info.status == "incompatible"
    assert expected in info.reason


def test_hook_returning_wrong_type_marks_plugin_broken() -> None:
    module = types.ModuleType("fakeplug_wrong")
    module.MLRUNTIME_PLUGIN_API = 1  # type: ignore[attr-defined]

    @hookimpl
    def mlruntime_register_adapters() -> object:
        return [SourceSpec("s", "m:a")]

    module.mlruntime_register_adapters = mlruntime_register_adapters  # type: ignore[attr-defined]
    registry = PluginRegistry(discover=False)
    with pytest.warns(PluginWarning):
        info = registry.register(module)
    assert info.status == "broken"
    assert "returned a SourceSpec in its list, expected AdapterSpec" in info.reason


def test_disabled_plugin_is_listed_but_not_loaded(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_distribution(
        site,
        "fake-good",
        "good",
        "fakeplug_good",
        GOOD_HOOKS.format(name="good", module="fakeplug_good"),
    )
    monkeypatch.setenv("MLRUNTIME_DISABLE_PLUGINS", "good, other")
    registry = PluginRegistry()
    assert _info(registry, "good").status == "disabled"
    assert "fakeplug_good" not in sys.modules
    assert "to_good_list" not in registry.adapters()


def _module_with(name: str, **hooks: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.MLRUNTIME_PLUGIN_API = 1  # type: ignore[attr-defined]
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))  # type: ignore[arg-type]
    return module


def test_conflicting_names_first_plugin_wins_and_second_is_warned() -> None:
    registry = PluginRegistry(discover=False)
    spec_a = AdapterSpec("to_thing", "a_mod:fn")
    spec_b = AdapterSpec("to_thing", "b_mod:fn")
    registry.register(_module_with("a", mlruntime_register_adapters=lambda: [spec_a]))
    info_b = registry.register(_module_with("b", mlruntime_register_adapters=lambda: [spec_b]))
    assert registry.get("adapter", "to_thing") is spec_a
    assert registry.provider("adapter", "to_thing") == "a"
    assert info_b.ok
    assert any("also provided by plugin 'a'" in w for w in info_b.warnings)


def test_commands_are_keyed_by_group_and_name() -> None:
    registry = PluginRegistry(discover=False)
    registry.register(
        _module_with(
            "p",
            mlruntime_register_commands=lambda: [
                CommandSpec("xgb", "m:train", group="train"),
                CommandSpec("xgb", "m:predict", group="predict"),
            ],
        )
    )
    assert sorted(registry.commands()) == ["predict xgb", "train xgb"]
    assert list(registry.commands("predict")) == ["predict xgb"]


def test_unknown_hook_name_is_warned_about() -> None:
    registry = PluginRegistry(discover=False)
    module = _module_with("typo", mlruntime_register_adaptors=lambda: [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = registry.register(module)
    assert any("unknown hook 'mlruntime_register_adaptors'" in w for w in info.warnings)


def test_missing_framework_is_reported_and_load_names_it() -> None:
    registry = PluginRegistry(discover=False)
    spec = DistributorSpec(
        "GhostEstimator",
        "ghost_pkg.train:GhostEstimator",
        requires=("ghost_framework_xyz",),
        framework="ghost",
    )
    info = registry.register(_module_with("ghost", mlruntime_register_distributors=lambda: [spec]))
    assert info.ok
    assert "distributor 'GhostEstimator' needs ghost_framework_xyz" in info.warnings
    with pytest.raises(PluginError, match="needs ghost_framework_xyz, which is not installed"):
        registry.load("distributor", "GhostEstimator")


def test_unknown_first_party_adapter_names_the_extra_to_install() -> None:
    registry = PluginRegistry(discover=False)
    with pytest.raises(PluginNotFoundError, match=r"pip install 'mlruntime\[pytorch\]'"):
        registry.get("adapter", "to_torch_dataset")
    with pytest.raises(PluginNotFoundError, match="available: none"):
        registry.get("adapter", "to_something_else")


def test_broken_first_party_plugin_is_named_in_lookup_error() -> None:
    def explode() -> list[AdapterSpec]:
        raise ImportError("libtorch_cpu.so: cannot open shared object file")

    registry = PluginRegistry(discover=False)
    with pytest.warns(PluginWarning):
        registry.register(_module_with("pytorch", mlruntime_register_adapters=explode))
    with pytest.raises(PluginNotFoundError, match=r"plugin 'pytorch' is broken .*libtorch_cpu"):
        registry.get("adapter", "to_torch_dataset")


def test_two_plugins_with_one_name_keep_the_first(site: Path) -> None:
    make_distribution(
        site,
        "fake-good",
        "dup",
        "fakeplug_dup1",
        GOOD_HOOKS.format(name="one", module="fakeplug_dup1"),
    )
    other = site / "other"
    other.mkdir()
    sys.path.insert(1, str(other))
    try:
        make_distribution(
            other,
            "fake-other",
            "dup",
            "fakeplug_dup2",
            GOOD_HOOKS.format(name="two", module="fakeplug_dup2"),
        )
        registry = PluginRegistry()
        with pytest.warns(PluginWarning, match="already named 'dup'"):
            info = _info(registry, "dup")
    finally:
        sys.path.remove(str(other))
    assert info.ok and info.distribution == "fake-good"
    assert "to_one_list" in registry.adapters()
    assert "to_two_list" not in registry.adapters()


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: AdapterSpec("to_x", "no_colon"), "must look like 'package.module:attribute'"),
        (lambda: AdapterSpec("x", "m:a"), "must be an identifier starting with 'to_'"),
        (lambda: AdapterSpec("", "m:a"), "needs a non-empty name"),
        (lambda: DistributorSpec("E", "m:a", role="trainer"), "role must be"),
    ],
)
def test_malformed_specs_are_rejected(factory, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        factory()


def test_spec_load_reports_missing_attribute() -> None:
    with pytest.raises(PluginError, match="has no attribute 'nope'"):
        AdapterSpec("to_x", "json:nope").load()
    assert AdapterSpec("to_x", "json:dumps").load() is __import__("json").dumps
