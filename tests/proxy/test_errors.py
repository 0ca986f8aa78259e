import orjson

from proxy import errors


def _body(response):
    return orjson.loads(response.body)


def test_every_runtap_error_has_the_openai_shape():
    cases = [
        (errors.upstream_unreachable("ClientConnectorError"), 502, "upstream_error", "upstream_unreachable"),
        (errors.upstream_timeout(30), 504, "upstream_error", "upstream_timeout"),
        (errors.request_too_large(1024), 413, "invalid_request_error", "request_too_large"),
        (errors.invalid_request_target(), 400, "invalid_request_error", "invalid_request_target"),
        (errors.openai_error(429, "over", "budget_exceeded", "budget_exceeded"), 429, "budget_exceeded",
         "budget_exceeded"),
    ]
    for response, status, type_, code in cases:
        assert response.status == status
        assert response.content_type == "application/json"
        body = _body(response)
        assert list(body) == ["error"]
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert (body["error"]["type"], body["error"]["code"], body["error"]["param"]) == (type_, code, None)
        assert body["error"]["message"]
