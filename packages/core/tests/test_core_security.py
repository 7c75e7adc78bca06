"""Security of a local job: the embedded Ray listens on loopback only and wants a token of
MLRUNTIME_HOME (a fresh driver process, with and without ``ray`` imported first); the home is
the user's only; a cluster's missing or wrong token is a clear ConfigError."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlruntime.errors import ConfigError
from mlruntime.runtime import loopback, security
from mlruntime.store import storage

LOOPBACK_PREFIXES = ("127.", "::ffff:127.", "::1")

DRIVER = textwrap.dedent(
    """
    import json, os, sys
    if sys.argv[1] == "ray-first":
        import ray  # before mlruntime.init(): Ray has read its single-host flag already
    import mlruntime, psutil, ray

    mlruntime.init(num_cpus=2)

    @ray.remote
    class Echo:
        def pid(self):
            return os.getpid()

    echo = Echo.remote()
    ray.get([echo.pid.remote(), ray.remote(lambda: 1).remote()])
    me = psutil.Process()
    pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
    listeners = sorted(
        {(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name())
         for c in psutil.net_connections(kind="inet")
         if c.status == psutil.CONN_LISTEN and c.pid in pids}
    )
    print("RESULT" + json.dumps({
        "listeners": listeners,
        "gcs": ray.get_runtime_context().gcs_address,
        "node_ip": ray.util.get_node_ip_address(),
        "token_path": os.environ.get("RAY_AUTH_TOKEN_PATH"),
    }), flush=True)
    sys.stdin.readline()  # stay up while the test knocks on the GCS
    mlruntime.shutdown()
    """
)


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(MLRUNTIME_HOME=str(home), RAY_USAGE_STATS_ENABLED="0", MLRUNTIME_QUIET="1")
    env.pop("MLRUNTIME_ADDRESS", None)
    return env


@pytest.mark.parametrize("order", ["fresh", "ray-first"])
def test_a_local_ray_listens_on_loopback_only_and_refuses_calls_without_its_token(
    tmp_path: Path, order: str
) -> None:
    home = tmp_path / "home"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), order],
        env=_clean_env(home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = ""
        for line in proc.stdout:
            if line.startswith("RESULT"):
                break
        assert line.startswith("RESULT"), proc.stderr.read() if proc.stderr else ""
        seen = json.loads(line.removeprefix("RESULT"))
        exposed = [
            entry for entry in seen["listeners"] if not entry[0].startswith(LOOPBACK_PREFIXES)
        ]
        assert seen["listeners"] and not exposed, seen["listeners"]
        assert seen["node_ip"] == "127.0.0.1" and seen["gcs"].startswith("127.0.0.1:")
        token_file = home / security.TOKEN_FILE
        assert seen["token_path"] == str(token_file)
        assert security.probe_gcs(seen["gcs"]) is True  # no token: refused
        assert security.probe_gcs(seen["gcs"], "0" * 64) is True  # a wrong one: refused
        assert security.probe_gcs(seen["gcs"], token_file.read_text()) is False
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_the_home_and_its_token_are_the_users_only_and_the_token_is_made_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "new" / "home"
    monkeypatch.setenv(storage.HOME_ENV, str(home))
    first = security.local_token_path()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    token = first.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert security.local_token_path().read_text() == token  # once per MLRUNTIME_HOME
    assert [p.name for p in home.iterdir()] == [security.TOKEN_FILE]  # no staging left


def test_a_home_the_user_named_keeps_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "team"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    monkeypatch.setenv(storage.HOME_ENV, str(shared))
    assert storage.mlruntime_home() == shared
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_the_token_is_found_where_ray_looks_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(security.AUTH_TOKEN_ENV, raising=False)
    monkeypatch.delenv(security.AUTH_TOKEN_PATH_ENV, raising=False)
    assert security.find_token()[0] is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-default-file\n")
    assert security.find_token()[0] == "from-default-file"
    named = tmp_path / "token"
    named.write_text("from-named-file")
    monkeypatch.setenv(security.AUTH_TOKEN_PATH_ENV, str(named))
    assert security.find_token() == ("from-named-file", f"the file {named}")
    monkeypatch.setenv(security.AUTH_TOKEN_ENV, "from-env")
    assert security.find_token()[0] == "from-env"


def test_a_missing_or_wrong_cluster_token_says_what_to_set() -> None:
    missing = security.cluster_auth_error("10.0.0.1:6379", None)
    assert isinstance(missing, ConfigError)
    for hint in ("10.0.0.1:6379", "none was found", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        assert hint in str(missing)
    assert "~/.ray/auth_token" in str(missing) and "`ray get-auth-token`" in str(missing)
    wrong = security.cluster_auth_error("10.0.0.1:6379", "the RAY_AUTH_TOKEN environment variable")
    assert "refused the authentication token from the RAY_AUTH_TOKEN" in str(wrong)


def test_rays_authentication_errors_are_recognised() -> None:
    cause = RuntimeError("Unauthenticated: Authentication token is missing or incorrect")
    wrapped = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
    wrapped.__cause__ = cause
    assert security.is_auth_failure(wrapped)
    assert not security.is_auth_failure(ConnectionError("Failed to connect"))


FILES_DRIVER = textwrap.dedent(
    """
    import os, sys
    import pandas as pd
    import mlruntime
    from mlruntime.partition import DPF
    from mlruntime.store.session import Session

    os.umask(0o022)  # a usual umask: files 0644, folders 0755 unless mlruntime narrows them
    mlruntime.init(num_cpus=2)
    frame = pd.DataFrame({"K": [1, 1, 2, 2, 3], "X": [1.0, 2.0, 3.0, 4.0, 5.0]})
    with Session() as session:  # the warehouse
        session.write_pandas(frame, "T", auto_create_table=True)
        session.sql("CREATE TABLE U AS SELECT * FROM T")
    mlruntime.create_from_dataframe("frames", "v1", frame)  # a dataset version

    def summarize(data, context):  # runs in Ray workers: run state and artifacts
        context.upload(float(data.to_pandas()["X"].sum()), "total.pkl")

    run = DPF(summarize).run("K", frame, run_id="r1")
    assert run.wait(show_progress=False).name == "SUCCESS"
    with open(sys.argv[1], "w") as handle:  # the user's own file, outside the home
        handle.write("mine")
    mlruntime.shutdown()
    """
)


def test_what_a_local_job_writes_in_the_home_is_the_users_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    script = tmp_path / "driver.py"
    script.write_text(FILES_DRIVER)
    outside = tmp_path / "outside.txt"
    done = subprocess.run(
        [sys.executable, str(script), str(outside)],
        env=_clean_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    modes = {
        str(path.relative_to(home)): stat.S_IMODE(path.lstat().st_mode)
        for path in home.rglob("*")
        if not path.is_symlink()
    }
    files = {name: mode for name, mode in modes.items() if (home / name).is_file()}
    folders = {name: mode for name, mode in modes.items() if (home / name).is_dir()}
    # every kind of file a job writes is there: the check below covers them all
    assert "warehouse.duckdb" in files
    assert any(name.endswith(".parquet") for name in files), sorted(files)
    assert any(name.endswith("total.pkl") for name in files), sorted(files)
    assert any("results" in name for name in files), sorted(files)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert {n: m for n, m in files.items() if m != 0o600} == {}
    assert {n: m for n, m in folders.items() if m != 0o700} == {}
    # the driver's umask is the user's again: their own files keep their usual mode
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644


BINDS = textwrap.dedent(
    """
    import json, socket
    seen = []
    any4 = socket.socket(socket.AF_INET)
    any4.bind(("0.0.0.0", 0))
    seen.append(any4.getsockname()[0])
    dual = socket.socket(socket.AF_INET6)
    dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    dual.bind(("::", 0))
    dual.listen()
    seen.append(dual.getsockname()[0])
    socket.create_connection(("127.0.0.1", dual.getsockname()[1])).close()  # peers still connect
    only6 = socket.socket(socket.AF_INET6)
    only6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    only6.bind(("::", 0))
    seen.append(only6.getsockname()[0])
    chosen = socket.socket(socket.AF_INET)
    chosen.bind(("127.0.0.1", 0))
    seen.append(chosen.getsockname()[0])
    print(json.dumps(seen))
    """
)


@pytest.mark.skipif(
    not loopback.can_narrow(), reason="the loopback library is built on Linux with a C compiler"
)
def test_the_loopback_library_turns_binds_to_any_address_into_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _clean_env(tmp_path / "home")
    monkeypatch.setenv("MLRUNTIME_HOME", str(tmp_path / "home"))
    library = loopback.loopback_library()
    assert library is not None and library.startswith(str(tmp_path / "home"))
    assert stat.S_IMODE(os.stat(library).st_mode) & 0o077 == 0
    merged = loopback.with_loopback_binds({"env_vars": {"A": "1"}, "pip": ["x"]})
    assert merged is not None and merged["pip"] == ["x"] and merged["env_vars"]["A"] == "1"
    assert merged["env_vars"]["LD_PRELOAD"].split()[0] == library
    run = [sys.executable, "-c", BINDS]
    narrowed = subprocess.run(
        run, env={**env, "LD_PRELOAD": library}, capture_output=True, text=True, check=True
    )
    assert json.loads(narrowed.stdout) == ["127.0.0.1", "::ffff:127.0.0.1", "::1", "127.0.0.1"]
    plain = subprocess.run(run, env=env, capture_output=True, text=True, check=True)
    assert json.loads(plain.stdout) == ["0.0.0.0", "::", "::", "127.0.0.1"]
