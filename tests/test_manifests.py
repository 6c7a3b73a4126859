"""Scene and app manifests: required fields, semver-like versions, source invariants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frameos.errors import ConfigError
from frameos.manifests import load_apps, load_scenes

SCENE = {
    "id": "clock",
    "name": "Clock",
    "version": "1.2.0",
    "source": {"type": "asset", "asset_path": "/srv/assets/clock"},
}
APP = {
    "id": "weather",
    "name": "Weather",
    "version": "0.3.1-beta.1",
    "source": {"type": "remote", "remote_url": "https://example.org/weather"},
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    return path


def test_valid_manifests_load(tmp_path: Path) -> None:
    assert [s.id for s in load_scenes(write(tmp_path, {"scenes": [SCENE]}))] == ["clock"]
    assert [a.id for a in load_apps(write(tmp_path, [APP]))] == ["weather"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {**SCENE, "version": "1.2"},
            "scenes[0].version: expected a semver-like version such as 1.2.3 or 1.2.3-beta.1, "
            'found "1.2"',
        ),
        (
            {**SCENE, "source": {"type": "asset", "asset_path": "relative"}},
            "scenes[0].source.asset.asset_path: expected an absolute path, found 'relative'",
        ),
        (
            {**SCENE, "source": {"type": "remote", "remote_url": "ftp://x/y"}},
            "scenes[0].source.remote.remote_url: expected an http:// or https:// URL, found 'ftp://x/y'",
        ),
        (
            {k: v for k, v in SCENE.items() if k != "name"},
            "scenes[0].name: required key is missing",
        ),
    ],
)
def test_invalid_scene_names_the_path(
    tmp_path: Path, entry: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenes(write(tmp_path, {"scenes": [entry]}))
    assert [str(p).split(": ", 1)[1] for p in info.value.problems] == [expected]


def test_duplicate_ids_and_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[1\].id: duplicate id 'clock'"):
        load_scenes(write(tmp_path, [SCENE, SCENE]))
    with pytest.raises(ConfigError, match="expected a list of apps"):
        load_apps(write(tmp_path, {"apps": "nope"}))
