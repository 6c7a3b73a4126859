"""The HTTP client for the /v1 API (httpx on trio, through anyio), and the one-line errors.

Every way a request can go wrong becomes one message that says which and what to do:
cannot connect → ClientError "is frameos running? …"; 401 → where the token was looked for;
403 → the scope the token lacks; 404 unknown_vm → the VM names the instance knows; 5xx (503
not_accepting while it stops). Those exit 2 (the instance cannot be used); any other refusal
(409 conflict, 422) is RequestFailed (exit 1), with the server's own message.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import orjson

from frameos.client.discover import ClientError, Target
from frameos.errors import FrameosError

if TYPE_CHECKING:
    from collections.abc import Mapping

TIMEOUT_S = 10.0  # one request, connect included; following a run has its own waits

__all__ = ["TIMEOUT_S", "Api", "ClientError", "RequestFailed", "TokenRefused", "unreachable"]


class RequestFailed(FrameosError):
    """The instance answered and refused the request for a reason of its own (exit 1)."""


class TokenRefused(ClientError):
    """401/403: the token is missing, wrong, or lacks a scope. Not transient: a client that
    retries (watch) gives up at once (exit 2)."""


def unreachable(target: Target, reason: str) -> ClientError:
    """The one message for an instance that does not answer."""
    if target.demo:
        how = "`frameos run --demo`"
    elif target.config_path is not None:
        how = f"`frameos run --config {target.config_path}`"
    else:
        how = "`frameos run --config PATH`"
    return ClientError(
        f"cannot reach frameos at {target.url} ({reason}): is frameos running? start it with "
        f"{how} (or `systemctl start frameos`), or pass --url with the address it serves"
    )


class Api:
    """One instance's /v1 API; `async with Api(target) as api:`."""

    def __init__(self, target: Target, timeout: float = TIMEOUT_S) -> None:
        self.target = target
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            base_url=target.url, headers=target.headers, timeout=timeout, trust_env=False
        )

    async def __aenter__(self) -> Api:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.__aexit__(exc_type, exc, tb)

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """The response, whatever its status; ClientError when there is none."""
        content = None if body is None else orjson.dumps(body)
        all_headers = dict(headers or {})
        if content is not None:
            all_headers["Content-Type"] = "application/json"
        try:
            return await self._client.request(
                method, path, params=params, content=content, headers=all_headers
            )
        except httpx.ConnectError as exc:
            raise unreachable(self.target, _reason(exc)) from None
        except httpx.TimeoutException:
            raise ClientError(
                f"frameos at {self.target.url} did not answer {method} {path} within "
                f"{self.timeout:g} s: it may be overloaded or wedged; check `systemctl status "
                "frameos` or its log"
            ) from None
        except httpx.TransportError as exc:
            raise ClientError(
                f"lost the connection to frameos at {self.target.url} during {method} {path} "
                f"({_reason(exc)}): is it restarting? try again"
            ) from None

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        vm: str | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed JSON) of a 2xx answer; every other status raises its one-line error.
        `vm` is the VM the request is about (a 404 then lists the VMs the instance knows)."""
        response = await self.send(method, path, params=params, body=body, headers=headers)
        if 200 <= response.status_code < 300:
            return response.status_code, self.parse(response, method, path)
        raise await self.refusal(response, method, path, vm=vm)

    async def get(self, path: str, **params: str | int) -> Any:
        return (await self.call("GET", path, params=params))[1]

    def parse(self, response: httpx.Response, method: str, path: str) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ClientError(
                f"{self.target.url} answered {method} {path} with HTTP {response.status_code} "
                "and no JSON: is that address a frameos instance? pass --url with the right one"
            ) from None

    async def refusal(
        self, response: httpx.Response, method: str, path: str, *, vm: str | None = None
    ) -> FrameosError:
        """The error to raise for a non-2xx answer."""
        status = response.status_code
        try:
            body = orjson.loads(response.content)
            code, message = str(body["error"]), str(body.get("message", ""))
            details = body.get("details") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return ClientError(
                f"{self.target.url} answered {method} {path} with HTTP {status} and no frameos "
                "error body: is that address a frameos instance? pass --url with the right one"
            )
        target = self.target
        if status == 401:
            looked = "; ".join(target.looked) or "nowhere"
            if code == "missing_authorization" or target.token is None:
                return TokenRefused(
                    f"{target.url} wants an API token (401 {code}) and none was found; looked at: "
                    f"{looked}. Pass --token-file PATH, or run as a user who can read the "
                    "instance's state_dir"
                )
            # with --token-file nothing else was looked at: name the file, not "nowhere"
            where = f"; looked at: {looked}" if target.looked else ""
            return TokenRefused(
                f"{target.url} refused the token from {target.token_from} (401 {code}): it is "
                f"not a token of this instance{where}. Pass --token-file with the right one "
                "(the instance's auth.token_file, or its state_dir/api-token)"
            )
        if status == 403:
            scope = details.get("scope", "?") if isinstance(details, dict) else "?"
            return TokenRefused(
                f"the token from {target.token_from} lacks the {scope!r} scope for {method} "
                f"{path} (403 {code}); use a token that has it (auth.tokens scopes, or the "
                "instance's own token)"
            )
        if status == 404 and code == "unknown_vm":
            known = details.get("known") if isinstance(details, dict) else None
            names = [str(n) for n in known] if isinstance(known, list) else await self.vm_names()
            known = ", ".join(names) if names else "none"
            return ClientError(f"unknown VM {vm!r}: {target.url} has these VMs: {known}")
        if status == 404 and code in ("not_found", "unknown_route"):
            if prefix := urlsplit(target.url).path:
                return ClientError(
                    f"{target.url} has no {path} (404 {code}): --url is the instance's base "
                    f"address (http://HOST:PORT), found the path {prefix}; pass --url without it"
                )
            return ClientError(
                f"{target.url} has no {path} (404 {code}): is it a frameos with the /v1 control "
                "API? upgrade it, or pass --url with the right address"
            )
        if status == 409 and code == "conflict" and isinstance(details, dict):
            run = details.get("run") or {}
            if isinstance(run, dict) and run.get("run_id"):
                return RequestFailed(
                    f"refused (409 conflict): run {run['run_id']} ({run.get('op')} "
                    f"{run.get('target')}, {run.get('state')}) is in the way; wait for it to "
                    "end (`frameos events --follow`), or stop the VM (a stop always wins)"
                )
        if status >= 500:  # the instance cannot act now (stopping: 503 not_accepting)
            return ClientError(
                f"{target.url} could not take {method} {path} (HTTP {status} {code}): {message}"
            )
        return RequestFailed(f"{method} {path} refused (HTTP {status} {code}): {message}")

    async def vm_names(self) -> list[str]:
        """The names of the instance's VMs (empty when it will not say)."""
        try:
            response = await self.send("GET", "/v1/vms")
            data = orjson.loads(response.content) if response.status_code == 200 else []
        except (ClientError, orjson.JSONDecodeError):
            return []
        items = data.get("vms", []) if isinstance(data, dict) else data
        if not isinstance(items, list):
            return []
        return [str(v["name"]) for v in items if isinstance(v, dict) and "name" in v]


def _reason(exc: Exception) -> str:
    """The innermost cause, said briefly ("connection refused")."""
    inner: BaseException = exc
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()
    text = str(exc) or type(exc).__name__
    if "all attempts to connect" in text or "Connection refused" in text:
        return "connection refused"
    return text
