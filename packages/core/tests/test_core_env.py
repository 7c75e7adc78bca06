"""On/off switches from the environment: one parsing for every MLRUNTIME_* switch."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mlruntime._env import env_flag
from mlruntime.runtime import progress, warm
from mlruntime.store import session

NAME = "MLRUNTIME_TEST_SWITCH"


@pytest.mark.parametrize("value", ["1", "true", "TRUE", " yes ", "On"])
def test_on_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(NAME, value)
    assert env_flag(NAME) is True
    assert env_flag(NAME, default=True) is True


@pytest.mark.parametrize("value", ["0", "false", "No", "OFF"])
def test_off_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(NAME, value)
    assert env_flag(NAME) is False
    assert env_flag(NAME, default=True) is False


@pytest.mark.parametrize("value", [None, "", "  "])
def test_unset_or_empty_gives_the_default(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(NAME, raising=False)
    else:
        monkeypatch.setenv(NAME, value)
    assert env_flag(NAME) is False
    assert env_flag(NAME, default=True) is True


def test_other_values_keep_the_default_and_warn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(NAME, "ture")
    with caplog.at_level(logging.WARNING, logger="mlruntime._env"):
        assert env_flag(NAME, default=True) is True
        assert env_flag(NAME) is False
    assert NAME in caplog.text and "'ture'" in caplog.text


def test_every_switch_reads_alike(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The switches that parsed their own way before: "false" silenced output, "off" kept
    scikit-learn, "true" left Snowflake's identifiers off."""
    monkeypatch.setenv(progress.QUIET_ENV, "false")
    assert progress.quiet() is False
    monkeypatch.setenv(progress.QUIET_ENV, "yes")
    assert progress.quiet() is True
    monkeypatch.setenv(warm.TOP_UP_ENV, "Off")
    assert warm.top_up_enabled() is False
    monkeypatch.setenv(warm.TOP_UP_ENV, "")  # empty: the default (on), as before
    assert warm.top_up_enabled() is True
    monkeypatch.setenv(session.SNOWFLAKE_IDENTIFIERS_ENV, "true")
    with session.Session(str(tmp_path / "w.duckdb")) as warehouse:
        assert warehouse.snowflake_identifiers is True
