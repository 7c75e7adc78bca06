"""Who may talk to the Ray a job uses: an embedded Ray on loopback behind a token of its own,
and a cluster's token found the way Ray finds it, with a clear error when it is missing or wrong.

Ray is imported here only by the functions that need it, never by ``import mlruntime``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlruntime.errors import ConfigError

__all__ = [
    "AUTH_MODE_ENV",
    "AUTH_TOKEN_ENV",
    "AUTH_TOKEN_PATH_ENV",
    "LOOPBACK",
    "TOKEN_FILE",
    "cluster_auth_error",
    "find_token",
    "is_auth_failure",
    "local_token_path",
    "loopback_only",
    "prepare_cluster",
    "prepare_local",
    "probe_gcs",
]

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
"""The address every server of an embedded Ray listens on."""

AUTH_MODE_ENV = "RAY_AUTH_MODE"
"""Ray's switch for token authentication (``token`` or ``disabled``)."""

AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
"""Ray reads the cluster's token from this environment variable first."""

AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
"""Then from the file this environment variable names."""

RAY_DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")
"""Then from this file (``ray get-auth-token --generate`` writes it)."""

TOKEN_FILE = "ray_auth_token"
"""The embedded Ray's token: a file in ``MLRUNTIME_HOME`` (mode 0600), made once."""

_GCS_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"
_AUTH_FAILURE_TEXT = "Authentication token is missing or incorrect"

_ours: dict[str, str | None] = {}
"""Environment variables this module set, with the value each had before."""


def local_token_path() -> Path:
    """The embedded Ray's token file in ``MLRUNTIME_HOME``, created (mode 0600) if missing.

    Returns:
        The path of the file; it holds a random 256-bit hex token, readable by the user only.
    """
    from mlruntime.store.storage import mlruntime_home

    path = mlruntime_home() / TOKEN_FILE
    if path.is_file() and path.stat().st_size:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return path
    staged = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        try:
            os.link(staged, path)  # atomic: of two processes making it at once, one wins
        except FileExistsError:
            pass
    finally:
        staged.unlink(missing_ok=True)
    return path


def prepare_local(ray_options: dict[str, Any]) -> dict[str, Any]:
    """Settings for starting an embedded Ray that nothing off this machine can reach.

    Every Ray server is bound to ``127.0.0.1`` (see :func:`loopback_only`), and token
    authentication is turned on (``RAY_AUTH_MODE=token``) with the token of
    :func:`local_token_path` (through ``RAY_AUTH_TOKEN_PATH``), so even a local process of
    another user cannot call into it. A token the user set (``RAY_AUTH_TOKEN`` /
    ``RAY_AUTH_TOKEN_PATH``) is used instead; ``RAY_AUTH_MODE=disabled`` set by the user is
    respected (with a warning). The environment variables stay set: the processes of the Ray
    this process starts later inherit them.

    Args:
        ray_options: The options the user passes to ``ray.init``.

    Returns:
        Options to add to ``ray.init``: ``_node_ip_address`` unless the user chose one.
    """
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None and AUTH_MODE_ENV not in _ours and mode.lower() != "token":
        logger.warning(
            "%s=%s: the embedded Ray starts without token authentication (it still listens "
            "on loopback only)",
            AUTH_MODE_ENV,
            mode,
        )
    else:
        _set_env(AUTH_MODE_ENV, "token")
        users_path = os.environ.get(AUTH_TOKEN_PATH_ENV) and AUTH_TOKEN_PATH_ENV not in _ours
        if not os.environ.get(AUTH_TOKEN_ENV) and not users_path:
            _set_env(AUTH_TOKEN_PATH_ENV, str(local_token_path()))
    _refresh_ray_config()
    return {} if "_node_ip_address" in ray_options else {"_node_ip_address": LOOPBACK}


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While starting an embedded Ray, keep its node address on loopback.

    Ray turns ``127.0.0.1`` into the machine's network address unless it believes it runs a
    single-host cluster (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once when Ray is
    imported); its servers then listen on that address or on all interfaces. This sets the
    flag for the start whether or not Ray was imported before, and puts it back afterwards
    (a later connection to a real cluster needs the machine's address again).
    """
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def prepare_cluster(address: str) -> None:
    """Before connecting to ``address``: use the cluster's token when the cluster wants one.

    For a ``HOST:PORT`` address, one unauthenticated call to the cluster's GCS tells whether
    it requires Ray's token. If so, the token is looked up where Ray looks
    (``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``),
    checked with a second call, and token authentication is turned on for this process. A
    cluster without authentication gets none from us (Ray's actors fail when only the driver
    expects a token). ``ray://`` and ``auto`` addresses are left to Ray.

    Args:
        address: The address given to :func:`mlruntime.init`.

    Raises:
        ConfigError: If the cluster requires a token and none is found, or the one found is
            not the cluster's; the message names what to set.
    """
    if address == "auto" or "://" in address or ":" not in address:
        return
    refused = probe_gcs(address)
    if refused is None:  # unreachable: ray.init says so in its own words
        return
    if not refused:
        if AUTH_MODE_ENV in _ours:
            _unset_ours(AUTH_MODE_ENV)  # our embedded Ray's setting, not this cluster's
            _refresh_ray_config()
        return
    token, source = find_token()
    if token is None:
        raise cluster_auth_error(address, None)
    if probe_gcs(address, token):
        raise cluster_auth_error(address, source)
    if os.environ.get(AUTH_MODE_ENV, "").lower() != "token":
        _set_env(AUTH_MODE_ENV, "token")
    _refresh_ray_config()


def find_token() -> tuple[str | None, str]:
    """The token Ray would send, and where it comes from (for messages).

    Returns:
        ``(token, source)``; ``token`` is ``None`` when Ray would find none.
    """
    token = os.environ.get(AUTH_TOKEN_ENV, "").strip()
    if token:
        return token, f"the {AUTH_TOKEN_ENV} environment variable"
    named = os.environ.get(AUTH_TOKEN_PATH_ENV)
    path = Path(named).expanduser() if named else RAY_DEFAULT_TOKEN_FILE.expanduser()
    try:
        token = path.read_text().strip()
    except OSError:
        token = ""
    return (token or None), f"the file {path}"


def probe_gcs(address: str, token: str | None = None, timeout_s: float = 5.0) -> bool | None:
    """Whether the Ray GCS at ``address`` refuses a call that carries ``token`` (or none).

    Args:
        address: ``HOST:PORT`` of the GCS.
        token: The token to send, if any.
        timeout_s: How long to wait for an answer.

    Returns:
        ``True`` when the call is refused for its token, ``False`` when it is not, ``None``
        when the GCS cannot be reached.
    """
    import grpc

    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(_GCS_PROBE_METHOD)
        try:
            call(b"", timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                return True
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
    return False


def cluster_auth_error(address: str | None, source: str | None) -> ConfigError:
    """The error for a cluster that refused this process for its token.

    Args:
        address: The cluster's address (``None``: unknown).
        source: Where the refused token came from; ``None`` when no token was found.

    Returns:
        A :class:`~mlruntime.errors.ConfigError` saying what to set.
    """
    where = f"the Ray cluster at {address}" if address else "the Ray cluster"
    what = (
        f"{where} requires its authentication token (Ray token authentication) and none was found"
        if source is None
        else f"{where} refused the authentication token from {source}: it is not this "
        "cluster's token"
    )
    return ConfigError(
        f"{what}. Set {AUTH_TOKEN_ENV} to the cluster's token, or save it in a file and set "
        f"{AUTH_TOKEN_PATH_ENV} to its path (or save it as ~/.ray/auth_token); "
        "`ray get-auth-token` on the head node prints it. See docs/cluster.md, "
        "'Securing a cluster'."
    )


def is_auth_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is Ray refusing this process for its token."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ == "AuthenticationError" or _AUTH_FAILURE_TEXT in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _set_env(name: str, value: str) -> None:
    if name not in _ours:
        _ours[name] = os.environ.get(name)
    os.environ[name] = value


def _unset_ours(name: str) -> None:
    before = _ours.pop(name, None)
    if before is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = before


def _refresh_ray_config() -> None:
    """Make this process's Ray core read the auth settings again (it caches them)."""
    if "ray._raylet" not in sys.modules:
        return
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # another Ray version: it reads them at start
        logger.debug("could not refresh Ray's cached authentication settings", exc_info=True)
