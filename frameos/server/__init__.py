"""The HTTP surface: the quart-trio app, the websocket fast path and the front door."""
