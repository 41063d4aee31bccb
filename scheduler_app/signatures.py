"""What a task takes: its arguments checked against the signature of the registered
task's function, before a schedule is saved or a run is queued, so that a typo in a
keyword argument is refused at the door instead of failing every run with a TypeError."""

from __future__ import annotations

import inspect
from typing import Any

from celery import current_app

POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class ArgumentsRefused(ValueError):
    """The arguments do not fit the task's signature; the message names what and lists what it takes."""


def signature_of(task_name: str) -> inspect.Signature | None:
    """The signature of the registered task's function (bound: no `self`), or None when
    the task is not registered here or its function cannot be inspected."""
    task = current_app.tasks.get(task_name)
    if task is None:
        return None
    try:
        return inspect.signature(task.run)
    except (TypeError, ValueError):
        return None


def described(signature: inspect.Signature) -> str:
    """The parameters as Python writes them, markers included (`a, b=2, *, c=3`)."""
    shown = str(signature.replace(return_annotation=inspect.Signature.empty)).strip("()")
    return shown or "no arguments"


def check(task_name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Refuse unknown keyword arguments, missing required ones and too many positional
    ones; a task taking **kwargs (or *args) accepts any of those."""
    signature = signature_of(task_name)
    if signature is None:
        return
    problems = _problems(signature.parameters.values(), args, kwargs)
    if problems:
        raise ArgumentsRefused(f"{'; '.join(problems)}. {task_name} takes ({described(signature)}).")


def _problems(parameters: Any, args: list[Any], kwargs: dict[str, Any]) -> list[str]:
    params = list(parameters)
    kinds = {parameter.kind for parameter in params}
    positional = [p for p in params if p.kind in POSITIONAL]
    filled = {p.name for p in positional[: len(args)]}
    problems = []
    if len(args) > len(positional) and inspect.Parameter.VAR_POSITIONAL not in kinds:
        problems.append(f"{len(args)} positional arguments given, it takes at most {len(positional)}")
    by_name = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)}
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        unknown = sorted(name for name in kwargs if name not in by_name)
        if unknown:
            problems.append(f"unknown keyword argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    twice = sorted(name for name in kwargs if name in filled)
    if twice:
        problems.append(f"given both by position and by keyword: {', '.join(twice)}")
    missing = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               and p.name not in filled and p.name not in kwargs]  # fmt: skip
    if missing:
        problems.append(f"missing required argument{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return problems
