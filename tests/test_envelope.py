"""The envelope carries its model; lines read back decode to the same model."""

from __future__ import annotations

import pytest

from frameos import events as ev
from frameos.envelope import decode, encode


def test_published_envelope_carries_its_model() -> None:
    event = ev.VmLaunched(vm="a", pid=7, attempt=1)
    envelope = encode(event, 3, 1.0)
    assert envelope.event is event
    assert envelope.model() is event
    match envelope.event:
        case ev.VmLaunched(vm=vm, pid=pid):
            assert (vm, pid) == ("a", 7)
        case _:
            pytest.fail("the model did not match its class")


@pytest.mark.parametrize(
    "event",
    [
        ev.VmLaunched(vm="a", pid=7, attempt=1),
        ev.WorkerStatus(worker_id="w", **{"from": "x"}, to="y"),
    ],
)
def test_a_line_read_back_decodes_to_an_equal_model(event: ev.Event) -> None:
    line = encode(event, 3, 1.0).line
    back = decode(line)
    assert back.event is None
    assert back.model() == event
    assert back.model() is back.model()  # decoded once
    assert back.line == line  # the same bytes


def test_unknown_event_name_is_a_value_error() -> None:
    back = decode(
        b'{"v":1,"seq":1,"timestamp":1.0,"event":"ext.x","severity":"info","fields":{}}\n'
    )
    with pytest.raises(ValueError, match=r"'ext.x' is not declared"):
        back.model()


def test_fields_that_do_not_fit_the_model_are_a_value_error() -> None:
    back = decode(
        b'{"v":1,"seq":1,"timestamp":1.0,"event":"message","severity":"info","fields":{}}\n'
    )
    with pytest.raises(ValueError, match="text"):
        back.model()
