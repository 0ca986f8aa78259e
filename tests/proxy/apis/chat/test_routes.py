from proxy.apis import OTHER, classify
from proxy.apis.chat import API


def test_chat_completions_after_each_prefix_and_azures_deployment_path() -> None:
    for path, template in (("/v1/chat/completions", "POST /v1/chat/completions"),
                           ("/openai/v1/chat/completions", "POST /openai/v1/chat/completions"),
                           ("/openai/deployments/gpt4o-prod/chat/completions",
                            "POST /openai/deployments/{deployment}/chat/completions")):
        route = classify("POST", path)
        assert (route.api, route.template, route.recorded, route.creates_run) == (API, template, True, False)
    assert classify("GET", "/v1/chat/completions") is OTHER  # stored completions: relayed, not parsed
    assert classify("POST", "/v1/chat/completions/extra") is OTHER
