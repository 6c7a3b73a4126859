"""An external producer's `ext.*` event has no model: the systemd view passes it by
(frameos/systemd.py) and still tells systemd what the typed events around it mean."""

from __future__ import annotations

from frameos import events as ev
from frameos.envelope import encode, encode_ext
from frameos.systemd import ServiceView
from tests.test_systemd_notifier import make_state


def test_an_ext_event_means_nothing_to_systemd() -> None:
    ext = encode_ext("ext.backup", "info", b'{"done": true}', 1, 1.0)
    launched = encode(ev.VmLaunched(vm="web", pid=10, attempt=1), 2, 1.0)
    view = ServiceView(make_state(), lambda: 0)
    view.observe([launched], 1.0)  # the first batch says where the start is
    assert view.observe([ext], 2.0) == []  # nothing changed for systemd
    with_ext = ServiceView(make_state(), lambda: 0).observe([ext, launched], 1.0)
    assert with_ext == ServiceView(make_state(), lambda: 0).observe([launched], 1.0) != []
