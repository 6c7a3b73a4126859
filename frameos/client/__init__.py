"""The client side of frameos (SPEC §10): commands that talk to a running instance.

    discover.py  the instance's URL and token, from the same config as `run` (or --url/--token-file)
    api.py       the HTTP client (httpx on trio) and the one-line errors for every refusal
    stream.py    event sources: the log file, /v1/events pages, /ws/events
    output.py    events as human lines (frameos.render) or JSON lines
    control.py   start|stop|restart|bootstrap|clean|reload: create a run, follow it to its end
    logs.py      a VM's output file (/v1/vms/{name}/log)

Nothing here is imported by `run`, `check` or `contract`; this file imports nothing, so
`events` from the log file never loads the HTTP client.
"""
