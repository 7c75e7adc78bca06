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


LAUNCHER_SUFFIXES = ("Estimator", "Distributor", "Trainer")
"""What the names of mlruntime's job-starting classes end with (``PyTorchTrainer``: Snowflake's
legacy name of ``PyTorchDistributor``): an ``mlruntime`` module not imported yet is not
imported to look (a plugin's may import its framework); the name says."""


def _uses(func: Any, kinds: tuple[type, ...], depth: int, seen: dict[Any, Any]) -> bool:
    values: list[Any] = []
    owner: Any = None  # the object of a bound method or callable object: its other methods
    while isinstance(func, functools.partial):
        values.extend([*func.args, *func.keywords.values()])
        func = func.func
    if isinstance(func, types.MethodType):  # what its object holds: self.estimator ...
        owner = func.__self__
        values.extend(_attributes_of(owner))
    elif not isinstance(func, types.FunctionType):  # a callable object
        owner = func
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
    attributes = set(_attribute_names(code))
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
    for module, taken in imported.items():
        loaded = sys.modules.get(module)
        for name in taken | attributes:  # from m import X / import m; m.X
            if loaded is not None:
                values.append(getattr(loaded, name, None))
            elif name.endswith(LAUNCHER_SUFFIXES):
                return True
    if (
        owner is not None
        and depth > 0
        and _users_class(type(owner))
        and _class_uses(type(owner), attributes, kinds, depth, seen, instance=owner)
    ):
        return True  # self._fit() in a train_func that is a method or a callable object
    unique: dict[int, Any] = {}
    for value in values:  # each once (a class named in many places)
        unique.setdefault(id(value), value)
    for value in unique.values():
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
        elif isinstance(value, type):  # a class of the user's: Trainer(...).run()
            if _users_class(value) and _class_uses(value, attributes, kinds, depth, seen):
                return True
        elif _users_class(type(value)) and _class_uses(  # an object of one: what it holds
            type(value), attributes, kinds, depth, seen, instance=value
        ):
            return True
    return False


CALLED_ANYWAY = (
    "__new__",
    "__init__",
    "__post_init__",
    "__call__",
    "__enter__",
    "__exit__",
    "__iter__",
    "__getitem__",
)
"""Methods of a class the code runs without naming them (making an object, calling it,
``with``, ``for``, ``[]``)."""


def _class_uses(
    cls: type,
    names: set[str],
    kinds: tuple[type, ...],
    depth: int,
    seen: dict[Any, Any],
    instance: Any = None,
) -> bool:
    """Whether the methods of the user's class ``cls`` that the caller reaches use one: those
    it names (``names``: the attributes its code reads) and :data:`CALLED_ANYWAY`, every
    definition of each along the class's bases (``super().run()``), then the ones these name
    in turn (``self._fit()``); and what the object or class holds under those names
    (``self.estimator``; a user object held there is read the same way, one level deeper).
    Each name of a class (with its object) is read once per depth, however often the class
    turns up."""
    done: set[str] = seen.setdefault(("class", id(cls), id(instance), depth), set())
    methods = _methods(cls)
    held = _attributes_dict(instance)
    todo = [*names, *CALLED_ANYWAY]
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        value = held[name] if name in held else _class_attribute(cls, name)
        if _is_kind(value, kinds):
            return True
        if (
            value is not None
            and depth > 1
            and not isinstance(value, type)
            and _users_class(type(value))
            and _class_uses(type(value), names | done, kinds, depth - 1, seen, instance=value)
        ):
            return True
        for method in methods.get(name, ()):
            if _uses(method, kinds, depth - 1, seen):
                return True
            todo.extend(_attribute_names(method.__code__))
    return False


def _class_attribute(cls: type, name: str) -> Any:
    """What ``cls`` holds under ``name`` that is not a function (``Config.estimator``)."""
    value = inspect.getattr_static(cls, name, None)
    if isinstance(value, types.FunctionType | staticmethod | classmethod | property):
        return None
    return value


@functools.lru_cache(maxsize=1024)
def _methods(cls: type) -> dict[str, tuple[types.FunctionType, ...]]:
    """The functions of ``cls`` and its bases that are the user's own classes (methods,
    static and class methods, property getters, cached ones), by name, every definition
    along the bases (most derived first)."""
    found: dict[str, list[types.FunctionType]] = {}
    for klass in cls.__mro__:
        if not _users_class(klass):
            continue
        for name, member in vars(klass).items():
            function = _function_of(member)
            if function is not None:
                found.setdefault(name, []).append(function)
    return {name: tuple(functions) for name, functions in found.items()}


def _function_of(member: Any) -> types.FunctionType | None:
    """The plain function behind a class member: a method, a static or class method, a
    property's getter, a ``functools.cached_property`` or ``lru_cache``-wrapped method."""
    if isinstance(member, staticmethod | classmethod):
        member = member.__func__
    elif isinstance(member, property):
        member = member.fget
    elif isinstance(member, functools.cached_property):
        member = member.func
    member = getattr(member, "__wrapped__", member)
    return member if isinstance(member, types.FunctionType) else None


def _users_class(cls: type) -> bool:
    """Whether ``cls`` is the user's (a notebook's, a script's, a project's), decided by the
    file of its module: not mlruntime's own (those that start jobs are estimators or
    distributors, which the check knows), an installed library's, the standard library's, or
    a builtin. (Methods a library makes, a dataclass's ``__init__``, are compiled from
    ``"<string>"``.)"""
    module = getattr(cls, "__module__", None) or ""
    if module == "__main__":  # a notebook's or script's (python -m cProfile: a stdlib __main__)
        return True
    if not module or _ours(module) or module in sys.builtin_module_names:
        return False
    loaded = sys.modules.get(module)
    path = getattr(loaded, "__file__", None)
    if path is None:  # exec'd or run_path code: where its functions were compiled from
        return loaded is None and any(
            _users_code(f) for f in map(_function_of, vars(cls).values()) if f is not None
        )
    return _users_file(path)


@functools.lru_cache(maxsize=4096)
def _attribute_names(code: types.CodeType) -> frozenset[str]:
    """The attribute names ``code`` reads (``obj.name``, ``obj.name()``)."""
    return frozenset(
        str(op.argval)
        for block in _code_objects(code)
        for op in dis.get_instructions(block)
        if op.opname in ("LOAD_ATTR", "LOAD_METHOD")
    )


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
    return list(_attributes_dict(obj).values())


def _attributes_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    try:
        return dict(vars(obj))
    except TypeError:  # no __dict__
        return {}


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
