"""The client's one-line errors for answers a frameos instance (or something else at its
address) may give: frameos/client/api.py's refusal and vm_names on odd shapes, each through a
real httpx request to a handler standing in for the instance."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from frameos.client.api import Api, ClientError, RequestFailed
from frameos.client.discover import Target

URL = "http://127.0.0.1:9"


def api_answering(handler: Callable[[httpx.Request], httpx.Response]) -> Api:
    api = Api(Target(URL, "tok", "--token-file t", (), None, None))
    api._client = httpx.AsyncClient(base_url=URL, transport=httpx.MockTransport(handler))
    return api


def error(status: int, code: str, message: str = "", **details: object) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "message": message, "details": details})


async def refusal_of(response: httpx.Response, vms: httpx.Response | None = None) -> Exception:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/vms":
            return vms if vms is not None else httpx.Response(500)
        return response

    async with api_answering(handler) as api:
        with pytest.raises((ClientError, RequestFailed)) as info:
            await api.call("POST", "/v1/runs", body={}, vm="alpha")
    return info.value


async def test_an_unknown_vm_without_the_list_asks_for_the_vms() -> None:
    vms = httpx.Response(200, json={"vms": [{"name": "beta"}, {"nope": 1}, "junk"]})
    exc = await refusal_of(error(404, "unknown_vm"), vms)
    assert str(exc) == f"unknown VM 'alpha': {URL} has these VMs: beta"


@pytest.mark.parametrize(
    "vms",
    [
        httpx.Response(500, json={"error": "internal"}),  # it will not say
        httpx.Response(200, content=b"<html>"),  # not JSON
        httpx.Response(200, json={"vms": "alpha"}),  # not a list
        httpx.Response(200, json=[]),  # a bare list, empty
    ],
)
async def test_an_unknown_vm_when_the_vms_cannot_be_listed_says_none(vms: httpx.Response) -> None:
    exc = await refusal_of(error(404, "unknown_vm", vm="alpha"), vms)
    assert str(exc).endswith("has these VMs: none") and isinstance(exc, ClientError)


async def test_a_404_route_is_an_instance_without_the_control_api() -> None:
    exc = await refusal_of(error(404, "unknown_route"))
    assert isinstance(exc, ClientError) and "with the /v1 control API" in str(exc)


async def test_a_conflict_without_a_run_is_the_servers_own_message() -> None:
    exc = await refusal_of(error(409, "conflict", "busy", run={"op": "stop"}))
    assert isinstance(exc, RequestFailed)
    assert str(exc) == "POST /v1/runs refused (HTTP 409 conflict): busy"


async def test_a_5xx_is_an_instance_that_cannot_act_now() -> None:
    exc = await refusal_of(error(503, "not_accepting", "stopping"))
    assert isinstance(exc, ClientError) and exc.exit_code == 2
    assert "could not take POST /v1/runs (HTTP 503 not_accepting): stopping" in str(exc)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(400, content=b"<html>bad</html>"),  # not JSON
        httpx.Response(400, json={"message": "no error key"}),
        httpx.Response(400, json=["a", "list"]),
    ],
)
async def test_a_refusal_without_a_frameos_error_body_says_so(answer: httpx.Response) -> None:
    exc = await refusal_of(answer)
    assert isinstance(exc, ClientError) and "no frameos error body" in str(exc)


async def test_a_2xx_that_is_not_json_says_the_address_may_not_be_frameos() -> None:
    async with api_answering(lambda _: httpx.Response(200, content=b"hello")) as api:
        with pytest.raises(ClientError, match="no JSON: is that address a frameos instance"):
            await api.get("/v1/vms")
