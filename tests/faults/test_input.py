"""Bad and hostile input on the proxy port: odd bodies, smuggling, path tricks, spoofed Host, admin auth.

Raw sockets where a well-behaved client library would refuse to send the bytes. The rig's
`finish()` proves, for every case, that the key reached no file, row, log line, metric or span.
"""

from __future__ import annotations

import aiohttp
import openai
import pytest
from yarl import URL

from tests.conftest import KEY_ID, RAW_KEY
from tests.faults.conftest import ADMIN_TOKEN, Rig, StartRig, raw_exchange

AUTH = f"Authorization: Bearer {RAW_KEY}\r\n".encode()
BETA = b"OpenAI-Beta: assistants=v2\r\n"


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), response[:200]
    return int(response.split(b" ", 2)[1])


# -- bodies ------------------------------------------------------------------------------------------


async def test_a_non_json_body_is_forwarded_for_the_upstream_to_judge(rig: Rig):
    assert rig.fake is not None
    body = b"assistant_id=asst_abc&stream=true"
    async with aiohttp.ClientSession() as session, session.post(
        rig.url + "/v1/threads/runs", data=body,
        headers={"Authorization": f"Bearer {RAW_KEY}", "OpenAI-Beta": "assistants=v2",
                 "Content-Type": "application/x-www-form-urlencoded"},
    ) as r:
        got = await r.read()
        status = r.status
    [seen] = rig.fake.requests
    assert seen.body == body
    assert (status, got) == (400, rig.fake.responses[0].body)  # the upstream's own verdict, untouched
    rec = await rig.finish()
    assert rec.one("select status, outcome, request_body, request_bytes, key_id from requests") == (
        400, "completed", body.decode(), len(body), KEY_ID)


async def test_invalid_utf8_in_a_request_body_crosses_byte_exact(rig: Rig):
    assert rig.fake is not None
    body = b'{"assistant_id": "asst_\xff\xfe", "stream": true}'
    async with aiohttp.ClientSession() as session, session.post(
        rig.url + "/v1/threads/runs", data=body,
        headers={"Authorization": f"Bearer {RAW_KEY}", "OpenAI-Beta": "assistants=v2",
                 "Content-Type": "application/json"},
    ) as r:
        await r.read()
    assert rig.fake.requests[0].body == body
    rec = await rig.finish()
    request_body, request_bytes = rec.one("select request_body, request_bytes from requests")
    # Text columns hold valid UTF-8: the bad bytes become U+FFFD; the byte count is the real one.
    assert request_bytes == len(body) and request_body == body.decode("utf-8", "replace")


async def test_invalid_utf8_in_an_upstream_event_reaches_the_client_and_is_kept_raw(start_rig: StartRig,
                                                                                   raw_upstream):
    frames = (b"event: thread.run.created\ndata: {\"id\":\"run_1\",\"object\":\"thread.run\",\"status\":\"queued\","
              b"\"thread_id\":\"thread_1\"}\n\n"
              b"event: thread.message.delta\ndata: {\"id\":\"msg_1\",\"v\":\"\xff\xfe\"}\n\n"
              b"event: done\ndata: [DONE]\n\n")
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n"
             b"Connection: close\r\n\r\n%s" % (len(frames), frames))
    upstream = await raw_upstream(reply)
    rig = await start_rig(upstream=upstream.url)
    async with rig.sdk().beta.threads.with_streaming_response.create_and_run(
        assistant_id="asst_abc", stream=True,
    ) as response:
        got = await response.read()
    assert got == frames
    rec = await rig.finish()
    assert rec.one("select outcome, event_count from requests") == ("completed", 3)
    rows = rec.q("select seq, event, raw from events order by seq")
    assert [(seq, event) for seq, event, _ in rows] == [(0, "thread.run.created"), (1, "thread.message.delta"),
                                                         (2, "done")]
    assert rows[1][2] == frames.split(b"\n\n")[1] + b"\n"  # the frame's exact bytes
    assert rows[0][2] is None and rows[2][2] is None


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_huge_body_on_a_recorded_route_is_a_413_and_never_forwarded(start_rig: StartRig, fake,
                                                                            fake_server, chunked: bool):
    rig = await start_rig(upstream=str(fake_server.make_url("")).rstrip("/"),
                          server={"max_recorded_body_bytes": 64 * 1024})
    body = b'{"assistant_id": "asst_abc", "instructions": "' + b"x" * (256 * 1024) + b'"}'

    async def chunks():
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    async with aiohttp.ClientSession() as session, session.post(
        rig.url + "/v1/threads/runs", data=chunks() if chunked else body,
        headers={"Authorization": f"Bearer {RAW_KEY}", "Content-Type": "application/json"},
    ) as r:
        answer = await r.json()
        status = r.status
    assert status == 413
    assert answer == {"error": {"message": "request body is larger than max_recorded_body_bytes (65536 bytes)",
                                "type": "invalid_request_error", "param": None, "code": "request_too_large"}}
    assert fake.requests == []
    rec = await rig.finish()
    assert rec.one("select status, outcome, request_body, key_id from requests") == (413, "rejected", None, KEY_ID)


async def test_a_huge_body_through_the_sdk_is_a_413_the_sdk_understands(start_rig: StartRig, fake, fake_server):
    rig = await start_rig(upstream=str(fake_server.make_url("")).rstrip("/"), server={"max_recorded_body_bytes": 1000})
    with pytest.raises(openai.APIStatusError) as raised:
        await rig.sdk().beta.threads.create_and_run(assistant_id="asst_abc", instructions="x" * 2000)
    assert raised.value.status_code == 413 and raised.value.body["code"] == "request_too_large"
    assert fake.requests == []
    rec = await rig.finish()
    assert rec.q("select status, outcome from requests") == [(413, "rejected")]


# -- framing -------------------------------------------------------------------------------------------

SMUGGLED = b"GET /admin/sql HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("head", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    b"Content-Length: 5\r\nTransfer-Encoding: identity, chunked\r\n",
    b"Content-Length: 5\r\nContent-Length: 40\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    b"Content-Length: +5\r\n",
], ids=["cl-te", "te-cl", "cl-te-list", "two-cl", "two-te", "signed-cl"])
async def test_request_smuggling_is_refused_before_anything_is_forwarded(rig: Rig, head: bytes):
    assert rig.fake is not None
    request = b"POST /v1/threads HTTP/1.1\r\nHost: x\r\n" + AUTH + BETA + head + b"\r\n0\r\n\r\n" + SMUGGLED
    response = await raw_exchange(rig.port, request, timeout_s=2)
    assert status_of(response) == 400
    assert response.count(b"HTTP/1.") == 1  # one answer, and the connection closed: nothing smuggled
    assert rig.fake.requests == []
    rec = await rig.finish()
    assert rec.q("select count(*) from requests") == [(0,)]


@pytest.mark.parametrize("bad_line", [
    f"Authorization: Bearer {RAW_KEY}\x01\r\n".encode(),
    f"Authorization : Bearer {RAW_KEY}\r\n".encode(),
    f"api-key: {RAW_KEY}\x7f\r\n".encode(),
    f"Authorization: Bearer {RAW_KEY}{'A' * 70_000}\r\n".encode(),
], ids=["control-char", "space-before-colon", "del-char", "over-long"])
async def test_a_malformed_header_carrying_the_key_is_refused_and_the_key_is_not_logged(rig: Rig, bad_line: bytes):
    """aiohttp quotes the offending header line in the 400 and in its error log: the log must not
    keep the key (the answer goes back to the client that sent it)."""
    assert rig.fake is not None
    request = b"GET /v1/threads/thread_1 HTTP/1.1\r\nHost: x\r\n" + bad_line + b"Connection: close\r\n\r\n"
    response = await raw_exchange(rig.port, request, timeout_s=2)
    assert status_of(response) == 400
    assert rig.fake.requests == []
    await rig.finish()  # the leak check covers the captured logs


# -- where requests go -----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/admin/sql", "//admin/sql", "/admin%2Fsql", "/%2e%2e/admin/sql",
                                    "/v1/../admin/sql", "/v1/%2e%2e/%2e%2e/admin/sql", "/metrics", "/healthz"])
async def test_admin_paths_on_the_proxy_port_go_to_the_upstream_never_the_admin_app(rig: Rig, target: str):
    assert rig.fake is not None
    async with aiohttp.ClientSession() as session, session.post(
        URL(rig.url + target, encoded=True), json={"sql": "select 42"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},  # even with the admin token
    ) as r:
        body = await r.json()
        assert r.status == 404
        assert r.headers["openai-organization"] == "org-runtapfake"  # the fake's answer, not runtap's
    assert body["error"]["message"].startswith("Invalid URL")
    [seen] = rig.fake.requests  # the upstream got it, and answered it
    assert seen.method == "POST" and seen.body == b'{"sql": "select 42"}'
    rec = await rig.finish()
    assert rec.q("select status from requests") == [(404,)]


@pytest.mark.parametrize("admin_target", [True, False], ids=["admin-listener", "elsewhere"])
async def test_an_absolute_form_target_is_refused_not_joined_to_the_upstream_url(rig: Rig, admin_target: bool):
    """`GET http://host/path HTTP/1.1`: appended to the upstream URL it names another host, or none."""
    assert rig.fake is not None
    where = rig.admin_url.removeprefix("http://") if admin_target else "evil.example:80"
    request = (f"GET http://x@{where}/metrics HTTP/1.1\r\nHost: {where}\r\n".encode() + AUTH
               + b"Connection: close\r\n\r\n")
    response = await raw_exchange(rig.port, request, timeout_s=3)
    assert status_of(response) == 400
    assert b'"code":"invalid_request_target"' in response
    assert b"runtap_" not in response  # not the admin listener's metrics
    assert rig.fake.requests == []
    rec = await rig.finish()
    assert rec.q("select status, outcome, key_id from requests") == [(400, "rejected", KEY_ID)]


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1:{admin}", "localhost", ""])
async def test_a_spoofed_host_changes_nothing_about_where_requests_go(rig: Rig, host: str):
    assert rig.fake is not None
    host = host.format(admin=rig.admin_url.rsplit(":", 1)[1])
    request = (f"GET /v1/threads/thread_x HTTP/1.1\r\nHost: {host}\r\n".encode() + AUTH + BETA
               + b"Connection: close\r\n\r\n")
    response = await raw_exchange(rig.port, request, timeout_s=3)
    assert status_of(response) == 404  # the fake's "no such thread"
    [seen] = rig.fake.requests
    assert seen.headers.getall("Host") == [rig.url_of.removeprefix("http://")]  # one, the upstream's
    assert not any(h.lower().startswith("x-forwarded") for h in seen.headers)
    await rig.finish()


# -- the admin listener ---------------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Bearer {RAW_KEY}", ADMIN_TOKEN,
                                           f"Bearer {ADMIN_TOKEN}x"],
                         ids=["none", "wrong", "the-api-key", "no-scheme", "suffix"])
async def test_admin_calls_without_the_exact_token_are_401(rig: Rig, authorization: str | None):
    headers = {"Authorization": authorization} if authorization else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(rig.admin_url + "/admin/sql", json={"sql": "select count(*) from requests"},
                                headers=headers) as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "invalid_admin_token"
        async with session.post(rig.admin_url + "/admin/sql", json={"sql": "select 42"},
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
            assert r.status == 200 and (await r.json())["rows"] == [[42]]
    await rig.finish()
