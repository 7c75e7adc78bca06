"""Whether a tuning run's ``train_func`` starts distributed jobs of its own.

``TunerConfig(uses_snowflake_trainer=None)`` (the default) asks :func:`starts_jobs`: a trial
that fits an ``XGBEstimator`` or runs a distributor needs the cluster's CPUs for its job's
workers, so its own Tune reservation must be empty; with one CPU reserved per trial, as for
plain trials, the jobs could never be placed. The check reads code, it runs and imports
nothing: the names ``train_func`` loads (globals, closure cells, what its object holds,
``mlruntime`` imports inside it), and, a few calls deep, the functions it calls that way and
the methods of the user's own classes and objects it uses (``Trainer(...).run()``).
"""

from __future__ import annotations

import dis
import functools
import inspect
import os
import sys
import sysconfig
import types
from typing import Any

__all__ = ["starts_jobs"]

DEPTH = 3
"""How many calls deep helper functions are followed."""


def starts_jobs(func: Any, depth: int = DEPTH) -> bool:
    """Whether ``func`` uses a distributed estimator or distributor (a class, or an instance,
    of :class:`~mlruntime.runtime.distributor.Distributor` or
    :class:`~mlruntime.train.gbdt.GBDTEstimator`), itself or through the functions it calls
    (``depth`` calls deep).

    Args:
        func: A function, a ``functools.partial`` or a callable object.
        depth: How many calls deep to follow.

    Returns:
        ``True`` if it does; ``False`` if nothing in its code says so.
    """
    from mlruntime.runtime.distributor import Distributor
    from mlruntime.train.gbdt import GBDTEstimator

    return _uses(func, (Distributor, GBDTEstimator), depth, {})


LAUNCHER_SUFFIXES = ("Estimator", "Distributor")
"""What the names of mlruntime's job-starting classes end with: an ``mlruntime`` module not
imported yet is not imported to look (a plugin's may import its framework); the name says."""


def _uses(func: Any, kinds: tuple[type, ...], depth: int, seen: dict[int, int]) -> bool:
    values: list[Any] = []
    while isinstance(func, functools.partial):
        values.extend([*func.args, *func.keywords.values()])
        func = func.func
    if isinstance(func, types.MethodType):  # what its object holds: self.estimator ...
        values.extend(_attributes_of(func.__self__))
    elif not isinstance(func, types.FunctionType):  # a callable object
        values.extend(_attributes_of(func))
        func = inspect.getattr_static(type(func), "__call__", None)
    try:
        func = inspect.unwrap(func)  # decorated functions
    except ValueError:  # pragma: no cover - a cycle of __wrapped__
        return False
    code = getattr(func, "__code__", None)
    if code is None or seen.get(id(code), -1) >= depth:  # read already, as deep or deeper
        return False
    seen[id(code)] = depth
    names: dict[str, Any] = getattr(func, "__globals__", {})
    for cell in getattr(func, "__closure__", None) or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    attributes: set[str] = set()
    imported: dict[str, set[str]] = {}  # mlruntime modules imported inside: names taken
    for block in _code_objects(code):
        module = ""
        for op in dis.get_instructions(block):
            if op.opname == "IMPORT_NAME":
                module = str(op.argval)
                if _ours(module):
                    imported.setdefault(module, set())
            elif op.opname == "IMPORT_FROM" and _ours(module):
                imported[module].add(str(op.argval))
            elif op.opname in ("LOAD_GLOBAL", "LOAD_NAME") and op.argval in names:
                values.append(names[op.argval])
            elif op.opname in ("LOAD_ATTR", "LOAD_METHOD"):
                attributes.add(str(op.argval))
    for module, taken in imported.items():
        loaded = sys.modules.get(module)
        for name in taken | attributes:  # from m import X / import m; m.X
            if loaded is not None:
                values.append(getattr(loaded, name, None))
            elif name.endswith(LAUNCHER_SUFFIXES):
                return True
    for value in values:
        if _is_kind(value, kinds):
            return True
        if isinstance(value, types.ModuleType):
            if _ours(value.__name__) and any(
                _is_kind(getattr(value, name, None), kinds) for name in attributes
            ):
                return True
        elif depth <= 0:
            continue
        elif isinstance(value, types.FunctionType | functools.partial):
            if _users_code(value) and _uses(value, kinds, depth - 1, seen):
                return True
        elif isinstance(value, type):  # a class of the user's: Trainer().run()
            if any(_uses(method, kinds, depth - 1, seen) for method in _methods(value)):
                return True
        elif methods := _methods(type(value)):  # an object of one: what it holds, its methods
            if any(_is_kind(held, kinds) for held in _attributes_of(value)):
                return True
            if any(_uses(method, kinds, depth - 1, seen) for method in methods):
                return True
    return False


def _methods(cls: type) -> list[types.FunctionType]:
    """The functions of ``cls`` and its bases that are the user's code (methods, static and
    class methods, property getters); none for a library's class, nor for mlruntime's own
    (those that start jobs are estimators or distributors, which the check knows)."""
    found = []
    for klass in cls.__mro__:
        if _ours(getattr(klass, "__module__", None) or ""):
            continue
        for member in vars(klass).values():
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            if isinstance(member, types.FunctionType) and _users_code(member):
                found.append(member)
    return found


_LIBRARIES = tuple(
    {
        os.path.join(os.path.realpath(path), "")
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (path := sysconfig.get_paths().get(key))
    }
)


def _users_code(func: Any) -> bool:
    """Whether ``func`` is the user's own code (a notebook's, a project's, mlruntime's when
    installed from source), not an installed library's or the standard library's, whose
    functions are not followed (they start no mlruntime jobs, and there are many)."""
    while isinstance(func, functools.partial):
        func = func.func
    code = getattr(func, "__code__", None)
    return code is not None and _users_file(code.co_filename)


@functools.lru_cache(maxsize=4096)
def _users_file(path: str) -> bool:
    if path.startswith("<"):  # a notebook cell, exec'd code
        return True
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not path.startswith(_LIBRARIES)


def _ours(module: str) -> bool:
    """Whether ``module`` is mlruntime's or a plugin's (``mlruntime_xgboost`` ...)."""
    return module.partition(".")[0].startswith("mlruntime")


def _attributes_of(obj: Any) -> list[Any]:
    try:
        return list(vars(obj).values())
    except TypeError:  # no __dict__
        return []


def _is_kind(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, type):
        return issubclass(value, kinds)
    return isinstance(value, kinds)


def _code_objects(code: types.CodeType) -> list[types.CodeType]:
    """``code`` and the code of the functions, lambdas and comprehensions defined in it."""
    found = [code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found.extend(_code_objects(const))
    return found
