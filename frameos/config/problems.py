"""Turning pydantic's errors into `Problem`s: one line each, with the JSON path and the fix.

`vms[1].env["A=B"]: the environment variable name 'A=B' contains '=', …` — a path names keys
that are identifiers with dots and any other key as a quoted JSON string, so a problem is always
one printable line whatever the file holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from frameos.config.models import PATTERN_HINTS, PathError, PathErrors
from frameos.errors import MAX_PROBLEMS, Problem

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(loc: tuple[int | str, ...]) -> str:
    """`('vms', 1, 'timeouts', 'sigterm_ms')` → `vms[1].timeouts.sigterm_ms`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":  # pydantic's marker for "the key itself": the path already names it
            continue
        elif _IDENTIFIER.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _found(value: Any) -> str:
    try:
        text = json.dumps(value, default=str)
    except (ValueError, RecursionError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: Any) -> Any:
    return f"{value:g}" if isinstance(value, float) else value


def _expected(err: Mapping[str, Any]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    simple = {
        "int_type": "an integer",
        "int_parsing": "an integer",
        "int_parsing_size": "an integer of sensible size",
        "int_from_float": "a whole number",
        "float_type": "a number",
        "float_parsing": "a number",
        "string_type": "a string",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "list_type": "a list",
        "dict_type": "an object",
        "model_type": "an object",
        "model_attributes_type": "an object",
        "path_type": "a path string",
        "missing": "this required key",
    }
    if kind in simple:
        return f"expected {simple[kind]}"
    bounds = {
        "greater_than_equal": "≥ {ge}",
        "less_than_equal": "≤ {le}",
        "greater_than": "> {gt}",
        "less_than": "< {lt}",
    }
    if kind in bounds:
        return "expected a value " + bounds[kind].format(**{k: _number(v) for k, v in ctx.items()})
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} item(s)"
    if kind == "string_too_short":
        return "expected a non-empty string"
    if kind == "string_too_long":
        return f"expected at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return "expected " + PATTERN_HINTS.get(pattern, f"text matching {pattern}")
    message = str(err["msg"])
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def problems_from(err: ValidationError, source: str, model: type[BaseModel]) -> list[Problem]:
    """One Problem per pydantic error, with JSON paths and hints for unknown keys."""
    problems: list[Problem] = []
    items = err.errors(include_url=False)
    for item in items[:MAX_PROBLEMS]:
        loc = tuple(item["loc"])
        exc = (item.get("ctx") or {}).get("error")
        if isinstance(exc, PathError):
            problems.append(Problem(source, exc.path, str(exc)))
            continue
        if isinstance(exc, PathErrors):
            problems.extend(Problem(source, e.path, str(e)) for e in exc.errors)
            continue
        path = json_path(loc)
        if item["type"] == "extra_forbidden":
            problems.append(Problem(source, path, _unknown_key(model, loc)))
        elif item["type"] == "missing":
            problems.append(Problem(source, path, "required key is missing"))
        elif item["type"] == "value_error" or item["type"] == "assertion_error":
            problems.append(Problem(source, path, _expected(item)))
        else:
            problems.append(
                Problem(source, path, f"{_expected(item)}, found {_found(item['input'])}")
            )
    # The rest only count: ConfigError shows how many there were, not what they were.
    return problems + [Problem(source, "", "not shown")] * (len(items) - len(items[:MAX_PROBLEMS]))


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        current = _unwrap_model(annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _unknown_key(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])
    parent = _model_at(model, loc[:-1])
    if parent is None:
        return "unknown key; remove it"
    names = list(parent.model_fields)
    snake = {to_camel(n): n for n in names}
    if key in snake:
        return f"given twice (as {key!r} and {snake[key]!r}); keep one spelling"
    import difflib  # only for a config with an unknown key: not on every load

    close = difflib.get_close_matches(key[:100], names + list(snake), n=1)
    hint = (
        f"did you mean {snake.get(close[0], close[0])!r}?"
        if close
        else ("known keys: " + ", ".join(names))
    )
    return f"unknown key; {hint}"
