"""Flags of `events` and `watch` that do not fit together are one usage line each, exit 2
(frameos/cli.py), and a trio failure is reported as itself, not as a group."""

from __future__ import annotations

import pytest

from frameos.cli import _single_leaf, main


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("frameos: ")
    return line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["events", "--host", "h1"], "--host needs --from nats://"),
        (["events", "--from", "nats://x:4222", "--url", "http://h"], "--from excludes --url"),
        (["events", "--from", "http://broker"], "--from must be a nats:// or tls:// URL"),
        (["watch", "--from", "nats://x:4222", "--demo"], "--from excludes a URL and --demo"),
        (["watch", "--from", "redis://broker"], "--from must be a nats:// or tls:// URL"),
    ],
)
def test_flags_that_do_not_fit_together(
    capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    assert says in usage_error(capsys, *args)


def test_the_one_failure_in_nested_groups_is_itself() -> None:
    bug = ValueError("x")
    assert _single_leaf(BaseExceptionGroup("a", [ExceptionGroup("b", [bug])])) is bug
    assert _single_leaf(ExceptionGroup("a", [bug, KeyError("k")])) is None
