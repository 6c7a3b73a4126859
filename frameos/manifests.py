"""Scene and app manifests (`--scenes`, `--apps`): validated descriptors (SPEC §2).

A manifest is a JSON list of descriptors, or an object holding that list under `scenes` /
`apps`. Versions are semver-like; an `asset` source needs an absolute `asset_path`, a `remote`
source an http(s) `remote_url`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from frameos.config import PATTERN_HINTS, problems_from, read_json
from frameos.errors import ConfigError, Problem

SEMVER = r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
PATTERN_HINTS[SEMVER] = "a semver-like version such as 1.2.3 or 1.2.3-beta.1"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AssetSource(_Strict):
    type: Literal["asset"]
    asset_path: Path

    @field_validator("asset_path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"expected an absolute path, found {str(value)!r}")
        return value


class RemoteSource(_Strict):
    type: Literal["remote"]
    remote_url: str

    @field_validator("remote_url")
    @classmethod
    def _http(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"expected an http:// or https:// URL, found {value!r}")
        return value


Source = Annotated[AssetSource | RemoteSource, Field(discriminator="type")]


class SceneDescriptor(_Strict):
    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(pattern=SEMVER)
    source: Source
    refresh_interval_s: float | None = Field(default=None, gt=0)


class AppDescriptor(_Strict):
    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(pattern=SEMVER)
    source: Source
    description: str | None = None


def _load(path: Path, key: str, item: type[_Strict]) -> list[Any]:
    data = read_json(path)
    source = str(path)
    if isinstance(data, dict) and set(data) == {key}:
        data, prefix = data[key], key
    else:
        prefix = ""
    if not isinstance(data, list):
        raise ConfigError(
            [
                Problem(
                    source,
                    prefix,
                    f"expected a list of {key} (or an object "
                    f'{{"{key}": [...]}}), found {type(data).__name__}',
                )
            ]
        )
    try:
        items: list[Any] = TypeAdapter(list[item]).validate_python(data)  # type: ignore[valid-type]
    except ValidationError as err:
        problems = problems_from(err, source, item)
        if prefix:
            problems = [
                Problem(
                    p.source,
                    f"{prefix}{p.path if p.path.startswith('[') else '.' + p.path}",
                    p.message,
                )
                for p in problems
            ]
        raise ConfigError(problems) from None
    seen: set[str] = set()
    for index, entry in enumerate(items):
        if entry.id in seen:
            raise ConfigError(
                [
                    Problem(
                        source,
                        f"{prefix}[{index}].id",
                        f"duplicate id {entry.id!r}; ids must be unique",
                    )
                ]
            )
        seen.add(entry.id)
    return items


def load_scenes(path: Path) -> list[SceneDescriptor]:
    """Read and validate a scene manifest; ConfigError lists every problem."""
    return _load(path, "scenes", SceneDescriptor)


def load_apps(path: Path) -> list[AppDescriptor]:
    """Read and validate an app manifest; ConfigError lists every problem."""
    return _load(path, "apps", AppDescriptor)
