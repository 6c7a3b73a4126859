"""`frameos watch` and `frameos status` (SPEC §10): a person's view of a running instance.

status.py  `frameos status`: one table from /healthz, /readyz and /v1/vms, then exit
model.py   the view's state, built from /v1 snapshots and the event stream
view.py    rich rendering of that state (header, VMs, messages, workers, detail, help)
keys.py    the keyboard: raw mode on the tty, keys read from a trio FdStream
app.py     the trio main: the stream, the redraw ticker, the keys, reconnects
"""
