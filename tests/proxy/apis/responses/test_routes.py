from proxy.apis import OTHER, classify
from proxy.apis.responses import API
from proxy.apis.responses.routes import RouteKind


def test_every_responses_route_after_every_prefix() -> None:
    for prefix in ("/v1", "/openai/v1", "/openai"):
        cases = {
            ("POST", "/responses"): (RouteKind.CREATE, "/responses", None),
            ("POST", "/responses/input_tokens"): (RouteKind.INPUT_TOKENS, "/responses/input_tokens", None),
            ("POST", "/responses/compact"): (RouteKind.COMPACT, "/responses/compact", None),
            ("GET", "/responses/resp_1"): (RouteKind.RETRIEVE, "/responses/{response_id}", "resp_1"),
            ("DELETE", "/responses/resp_1"): (RouteKind.DELETE, "/responses/{response_id}", "resp_1"),
            ("POST", "/responses/resp_1/cancel"): (RouteKind.CANCEL, "/responses/{response_id}/cancel", "resp_1"),
            ("GET", "/responses/resp_1/input_items"): (RouteKind.INPUT_ITEMS, "/responses/{response_id}/input_items",
                                                       "resp_1"),
            ("POST", "/conversations"): (RouteKind.CONVERSATIONS, "/conversations", None),
            ("GET", "/conversations/conv_1/items/msg_1"): (RouteKind.CONVERSATIONS,
                                                           "/conversations/{conversation_id}/items", None),
        }
        for (method, path), (kind, template, response_id) in cases.items():
            route = classify(method, prefix + path)
            assert (route.kind, route.template, route.response_id, route.api) == (
                kind, f"{method} {prefix}{template}", response_id, API), (method, prefix + path)
            assert route.recorded and not route.creates_run  # budgets for Responses: not yet (issue #14)


def test_other_paths_are_not_responses_routes() -> None:
    socket = classify("GET", "/v1/responses")  # the WebSocket mode's upgrade: recorded by relay/socket_tap.py
    assert (socket.kind, socket.template, socket.socket, socket.budgeted) == (
        "responses_socket", "GET /v1/responses", True, False)
    assert classify("GET", "/openai/v1/responses").template == "GET /openai/v1/responses"
    assert classify("PUT", "/v1/responses/resp_1") is OTHER
    assert classify("POST", "/v2/responses") is OTHER
    assert classify("POST", "/v1/threads/runs").api is not API  # Assistants keep theirs
