"""The key tables of docs/configuration.md, generated from the models.

Each row comes from one model field: its key, type, default, what it allows (bounds, lengths,
patterns, the validators' rules) and its `description`. tests/test_config_docs.py keeps the
generated part of docs/configuration.md equal to `tables()`; `FRAMEOS_UPDATE_GOLDEN=1` rewrites it.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from frameos.config import load
from frameos.config.models import PATTERN_HINTS, RULES, FrameConfig

BEGIN = "<!-- generated from frameos/config/models.py: begin (do not edit by hand) -->"
END = "<!-- generated from frameos/config/models.py: end -->"


def tables() -> str:
    """The generated part of docs/configuration.md (between BEGIN and END)."""
    out = [BEGIN, ""]
    sections: list[tuple[str, type[BaseModel]]] = [("", FrameConfig)]
    while sections:
        prefix, model = sections.pop(0)
        title = f"`{prefix}`" if prefix else "Top level"
        doc = (model.__doc__ or "").strip().split("\n")[0]
        doc = doc.split(": ", 1)[1] if doc.startswith("`") else doc
        doc = doc[:1].upper() + doc[1:]
        out += [f"### {title}", "", doc, "", "| key | type | default | allowed | description |"]
        out.append("| --- | --- | --- | --- | --- |")
        nested: list[tuple[str, type[BaseModel]]] = []
        for name, info in model.model_fields.items():
            key = f"{prefix}.{name}" if prefix else name
            sub = _submodel(info.annotation)
            if sub is not None:
                many = typing.get_origin(info.annotation) is list
                nested.append((f"{key}[]" if many else key, sub))
            sizes = name.endswith("bytes")
            cells = [f"`{key}`", _type(info.annotation), _default(info, sizes)]
            cells.append(_allowed(info, sizes))
            cells.append(info.description or "")
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        out.append("")
        sections[0:0] = nested
    out += [
        "### Limits of the file itself",
        "",
        f"- at most {_size(load.MAX_CONFIG_BYTES)}, a regular file (a FIFO, a device or a "
        "directory is refused before anything is read), UTF-8;",
        f"- nesting of at most {load.MAX_DEPTH} levels; integers of at most "
        f"{load.MAX_NUMBER_DIGITS} digits; no `NaN` or `Infinity`; no key twice in one object; "
        "no lone `\\ud800`-`\\udfff` escapes;",
        f"- per VM, its argv plus its `env` at most {_size(load.MAX_EXEC_BYTES)} once "
        f"`{{qmp_socket}}` and `{{overlay}}` are filled in; the QMP socket path at most "
        f"{load.UNIX_PATH_MAX} bytes.",
        "",
        END,
    ]
    return "\n".join(out)


def splice(document: str) -> str:
    """`document` with its generated part replaced by `tables()`."""
    head, _, rest = document.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + tables() + tail


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _type(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " | ".join(f"`{value}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(arg) for arg in args if arg is not type(None)) + " or null"
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"object of {_type(args[0])} → {_type(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    return names.get(annotation, str(annotation))


def _default(info: FieldInfo, sizes: bool) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        return "see below" if isinstance(value, BaseModel) else f"`{json.dumps(value)}`"
    if info.default is PydanticUndefined:
        return "required"
    if info.default is None:
        return "unset"
    value = str(info.default) if isinstance(info.default, Path) else info.default
    if sizes and isinstance(value, int) and _size(value) != str(value):
        return f"`{value}` ({_size(value)})"
    return f"`{json.dumps(value)}`"


def _size(value: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value and value % scale == 0:
            return f"{value // scale} {unit}"
    return str(value)


def _metadata(info: FieldInfo) -> list[Any]:
    found = list(info.metadata)
    stack: list[Any] = [info.annotation]
    while stack:
        annotation = stack.pop()
        if typing.get_origin(annotation) is typing.Annotated:
            found += annotation.__metadata__
        stack += typing.get_args(annotation)
    return found


def _allowed(info: FieldInfo, sizes: bool) -> str:
    parts: list[str] = []
    low = high = None
    shortest = longest = None
    for item in _metadata(info):
        match item:
            case annotated_types.Ge(ge=value):
                low = f"≥ {_number(value, sizes)}"
            case annotated_types.Gt(gt=value):
                low = f"> {_number(value, sizes)}"
            case annotated_types.Le(le=value):
                high = f"≤ {_number(value, sizes)}"
            case annotated_types.Lt(lt=value):
                high = f"< {_number(value, sizes)}"
            case annotated_types.MinLen(min_length=value):
                shortest = value
            case annotated_types.MaxLen(max_length=value):
                longest = value
            case AfterValidator(func=func) if func in RULES:
                parts.append(RULES[func])
            case _ if getattr(item, "pattern", None):
                parts.append(PATTERN_HINTS.get(item.pattern, f"matches `{item.pattern}`"))
    if low and high and low.startswith("≥") and high.startswith("≤"):
        parts.insert(0, f"{low[2:]}–{high[2:]}")
    else:
        parts[0:0] = [bound for bound in (low, high) if bound]
    if shortest is not None or longest is not None:
        span = f"≥ {shortest}" if longest is None else f"≤ {longest}"
        span = f"{shortest}–{longest}" if shortest is not None and longest is not None else span
        parts.insert(0, f"length {span}")
    return "; ".join(dict.fromkeys(parts))


def _number(value: Any, sizes: bool) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if sizes and isinstance(value, int):
        return _size(value)
    return f"{value:g}" if isinstance(value, float) else str(value)
