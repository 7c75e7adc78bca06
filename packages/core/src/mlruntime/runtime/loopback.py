"""Keep the listeners of frameworks that bind every interface on loopback, in local jobs.

XGBoost's collective (each worker's peer and error sockets) and TensorFlow's gRPC server bind
``0.0.0.0`` / ``[::]`` whatever address they are given, so a local job with several workers
would be reachable from the network while it runs. On Linux, the workers of such a job start
with a tiny preloaded library (``LD_PRELOAD``) whose ``bind`` turns a bind to "any address"
into a bind to loopback: ``127.0.0.1`` for IPv4, ``::1`` for an IPv6-only socket and
``::ffff:127.0.0.1`` for a dual-stack one (which still takes the IPv4 loopback connections the
job's peers make). It is compiled once per ``MLRUNTIME_HOME`` with the system's C compiler;
where there is none (or on another OS) jobs run as before and :func:`loopback_library` says
why in the log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Any

__all__ = [
    "LIBRARY_DIR",
    "SOURCE",
    "c_compiler",
    "can_narrow",
    "loopback_library",
    "with_loopback_binds",
]

logger = logging.getLogger(__name__)

LIBRARY_DIR = "lib"
"""Where under ``MLRUNTIME_HOME`` the compiled library is kept."""

SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

/* mlruntime: a bind to any address becomes a bind to loopback (local jobs only). */
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind = 0;
    if (!real_bind) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in in4;
        memcpy(&in4, addr, sizeof in4);
        if (in4.sin_addr.s_addr == htonl(INADDR_ANY)) {
            in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return real_bind(fd, (const struct sockaddr *)&in4, sizeof in4);
        }
    } else if (addr && addr->sa_family == AF_INET6
               && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 in6;
        memcpy(&in6, addr, sizeof in6);
        if (IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr)) {
            int v6only = 0;
            socklen_t size = sizeof v6only;
            if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &size) != 0) v6only = 0;
            if (v6only) {
                in6.sin6_addr = in6addr_loopback;
            } else { /* dual stack: ::ffff:127.0.0.1 */
                memset(&in6.sin6_addr, 0, sizeof in6.sin6_addr);
                in6.sin6_addr.s6_addr[10] = 0xff;
                in6.sin6_addr.s6_addr[11] = 0xff;
                in6.sin6_addr.s6_addr[12] = 127;
                in6.sin6_addr.s6_addr[15] = 1;
            }
            return real_bind(fd, (const struct sockaddr *)&in6, sizeof in6);
        }
    }
    return real_bind(fd, addr, len);
}
"""
"""The library's C source."""

_lock = threading.Lock()
_built: dict[str, str | None] = {}


def c_compiler() -> str | None:
    """The C compiler the library is built with: ``$CC``, else ``cc``, else ``gcc``."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def can_narrow() -> bool:
    """Whether the library can be built here (Linux with a C compiler)."""
    return sys.platform.startswith("linux") and c_compiler() is not None


def loopback_library() -> str | None:
    """The path of the compiled library, building it on first use (``None`` where it cannot
    be: not Linux, no C compiler, or the build failed; the reason is logged once)."""
    from mlruntime.store.storage import mlruntime_home

    home = str(mlruntime_home())
    with _lock:
        if home in _built:
            return _built[home]
        path: str | None = None
        digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
        target = os.path.join(home, LIBRARY_DIR, f"mlruntime-loopback-{digest}.so")
        compiler = c_compiler()
        if os.path.exists(target):
            path = target
        elif not sys.platform.startswith("linux"):
            logger.info(
                "local jobs of XGBoost/TensorFlow with several workers keep their "
                "listeners on all interfaces here (binds are narrowed on Linux only)"
            )
        elif compiler is None:
            logger.warning(
                "no C compiler (cc): local XGBoost/TensorFlow jobs with several workers will "
                "listen on all interfaces while they run; install one (gcc) to keep them on "
                "loopback"
            )
        else:
            path = _compile(compiler, target)
        _built[home] = path
        return path


def _compile(compiler: str, target: str) -> str | None:
    from mlruntime.store.storage import private_files

    with private_files(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as tmp:
            source = os.path.join(tmp, "loopback.c")
            with open(source, "w") as handle:
                handle.write(SOURCE)
            built = os.path.join(tmp, "loopback.so")
            done = subprocess.run(
                [compiler, "-shared", "-fPIC", "-O2", "-o", built, source, "-ldl"],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                logger.warning(
                    "could not build the loopback library (%s); local XGBoost/TensorFlow "
                    "jobs with several workers will listen on all interfaces: %s",
                    compiler,
                    done.stderr.strip()[-500:],
                )
                return None
            os.replace(built, target)
    return target


def with_loopback_binds(runtime_env: dict[str, Any] | None) -> dict[str, Any] | None:
    """``runtime_env`` with the library preloaded in the workers (unchanged where it cannot
    be built). An ``LD_PRELOAD`` already in the driver's environment is kept after it."""
    library = loopback_library()
    if library is None:
        return runtime_env
    env = dict(runtime_env or {})
    env_vars = dict(env.get("env_vars") or {})
    existing = env_vars.get("LD_PRELOAD", os.environ.get("LD_PRELOAD", ""))
    env_vars["LD_PRELOAD"] = f"{library} {existing}".strip()
    env["env_vars"] = env_vars
    return env
