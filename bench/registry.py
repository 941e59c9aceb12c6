"""Registries of tasks, task groups and adapters, open to other packages.

Built-in tasks and adapters live in the top-level ``tasks`` and ``adapters``
packages and register themselves on import with :func:`register_task`,
:func:`register_group` and :func:`register_adapter`. Other distributions add
theirs through entry points (``bench.tasks``, ``bench.adapters``) whose value is
either the class itself or a module that registers on import::

    [project.entry-points."bench.adapters"]
    my-model = "my_package.adapter:MyModelAdapter"
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from bench.adapter import Adapter
from bench.errors import ConfigError
from bench.task import Task, TaskGroup

_TASKS: dict[str, type[Task]] = {}
_GROUPS: dict[str, type[TaskGroup]] = {}
_ADAPTERS: dict[str, type[Adapter]] = {}
_loaded = False

T = TypeVar("T")


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available by its ``name``."""
    return _register(_TASKS, cls, "task")


def register_group(cls: type[TaskGroup]) -> type[TaskGroup]:
    """Class decorator: make a task group available by its ``name``."""
    return _register(_GROUPS, cls, "task group")


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter available by its ``name``."""
    return _register(_ADAPTERS, cls, "adapter")


def _register(table: dict[str, Any], cls: Any, kind: str) -> Any:
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} needs a non-empty `name` to be registered as a {kind}")
    existing = table.get(cls.name)
    if existing is not None and existing is not cls:
        raise TypeError(f"{kind} name {cls.name!r} is taken by {existing.__module__}.{existing.__qualname__}")
    table[cls.name] = cls
    return cls


def load_plugins() -> None:
    """Import the built-in tasks and adapters, then every entry point (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("tasks")
    importlib.import_module("adapters")
    for group, register in (("bench.tasks", _register_task_like), ("bench.adapters", register_adapter)):
        for point in entry_points(group=group):
            try:
                loaded = point.load()
            except Exception as error:  # a broken plugin must not take the harness down
                raise ConfigError(
                    f"entry point {point.name!r} ({point.value}) in group {group!r} failed to import: {error}"
                ) from error
            if inspect.isclass(loaded):
                if loaded.name != point.name:
                    loaded = type(loaded.__name__, (loaded,), {"name": point.name})
                register(loaded)


def _register_task_like(cls: Any) -> Any:
    return register_group(cls) if issubclass(cls, TaskGroup) else register_task(cls)


def task_names() -> list[str]:
    load_plugins()
    return sorted(_TASKS)


def group_names() -> list[str]:
    load_plugins()
    return sorted(_GROUPS)


def adapter_names() -> list[str]:
    load_plugins()
    return sorted(_ADAPTERS)


def get_task(name: str) -> type[Task]:
    load_plugins()
    return _lookup(_TASKS, name, "task", [*_TASKS, *_GROUPS])


def get_group(name: str) -> type[TaskGroup] | None:
    load_plugins()
    return _GROUPS.get(name)


def get_adapter(name: str) -> type[Adapter]:
    load_plugins()
    return _lookup(_ADAPTERS, name, "model", list(_ADAPTERS))


def _lookup(table: dict[str, T], name: str, kind: str, known: list[str]) -> T:
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(known))} (see `bench list`)."
    )


def expand_tasks(spec: str) -> tuple[list[str], list[str]]:
    """Split a comma list of task and group names into (tasks in order, groups)."""
    load_plugins()
    tasks: list[str] = []
    groups: list[str] = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        group = _GROUPS.get(name)
        members = list(group.members) if group else [get_task(name).name]
        if group:
            groups.append(name)
        tasks.extend(m for m in members if m not in tasks)
    if not tasks:
        raise ConfigError("no task given: pass --task NAME (see `bench list tasks`)")
    return tasks, groups


# --------------------------------------------------------------------------- model args


def parse_model_args(text: str | None, flag: str = "--model-args") -> dict[str, str]:
    """Parse ``"k=v,k2=v2"`` (``--model-args``, ``--task-args``); raises :class:`ConfigError` naming the bad part."""
    args: dict[str, str] = {}
    if not text:
        return args
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag}: {part!r} is not key=value; write e.g. {flag} name=value,other=2")
        if key in args:
            raise ConfigError(f"{flag}: {key!r} is given twice")
        args[key] = value.strip()
    return args


def build_adapter(name: str, model_args: dict[str, str], **runtime: Any) -> Adapter:
    """Instantiate adapter ``name`` with ``--model-args`` converted by its ``__init__`` type hints.

    ``runtime`` values (``device``, ``seed``, ``batch_size``) are passed only to
    adapters whose ``__init__`` accepts them, and never override ``model_args``.
    """
    cls = get_adapter(name)
    accepted = _options(cls, exclude=())
    unknown = sorted(set(model_args) - set(accepted))
    if unknown:
        allowed = ", ".join(sorted(set(accepted) - set(runtime))) or "none"
        raise ConfigError(f"model {name!r} does not take --model-args {', '.join(unknown)}; it takes: {allowed}")
    kwargs: dict[str, Any] = {k: v for k, v in runtime.items() if k in accepted}
    kwargs.update(_converted(cls, model_args, "--model-args"))
    missing = [p for p, param in accepted.items() if param.default is param.empty and p not in kwargs]
    if missing:
        raise ConfigError(f"model {name!r} needs --model-args {', '.join(f'{m}=...' for m in missing)}")
    adapter = cls(**kwargs)
    adapter.init_args = {k: v for k, v in kwargs.items() if k in model_args}
    return adapter


def build_tasks(names: list[str], data_root: Path, split: str | None, task_args: dict[str, str]) -> list[Task]:
    """Instantiate tasks; each gets the ``--task-args`` its ``__init__`` declares.

    An argument that none of the tasks takes is an error, so a typo never
    silently runs with defaults.
    """
    classes = [get_task(name) for name in names]
    options = {cls.name: _options(cls, exclude=("data_root", "split")) for cls in classes}
    unused = sorted(set(task_args) - {o for accepted in options.values() for o in accepted})
    if unused:
        takes = "; ".join(f"{n}: {', '.join(sorted(o)) or 'none'}" for n, o in options.items())
        raise ConfigError(f"no selected task takes --task-args {', '.join(unused)} ({takes})")
    tasks = []
    for cls in classes:
        tasks.append(cls(data_root, split=split, **_converted(cls, task_args_taken(cls, task_args), "--task-args")))
    return tasks


def task_args_taken(cls: type, task_args: Mapping[str, str]) -> dict[str, str]:
    """The part of ``task_args`` that task class ``cls``'s constructor declares (a run's
    ``--task-args`` may belong to another of its tasks)."""
    accepted = _options(cls, exclude=("data_root", "split"))
    return {k: v for k, v in task_args.items() if k in accepted}


def _options(cls: type, exclude: tuple[str, ...]) -> dict[str, inspect.Parameter]:
    signature = inspect.signature(cls.__init__)
    return {
        p.name: p for p in signature.parameters.values()
        if p.name != "self" and p.name not in exclude and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _converted(cls: type, args: dict[str, str], flag: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls.__init__)
    return {key: _convert(value, hints.get(key, str), f"{flag} {key}") for key, value in args.items()}


def _convert(value: str, hint: Any, where: str) -> Any:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    options = tuple(o for o in options if o is not type(None)) or (str,)
    target = options[0]
    try:
        if target is bool:
            lowered = value.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if target in (int, float):
            return target(value)
        if target is Path:
            return Path(value).expanduser()
    except ValueError as error:
        raise ConfigError(f"{where}={value!r}: {error}") from None
    return value
