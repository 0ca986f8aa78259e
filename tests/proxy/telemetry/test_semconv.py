import orjson
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
from opentelemetry.semconv.attributes import error_attributes, server_attributes
from opentelemetry.trace import SpanKind

from proxy.telemetry import semconv as sc
from proxy.telemetry.spans import SpanRecord


def test_attribute_names_match_the_installed_semantic_conventions():
    ours = {name: value for name, value in vars(sc).items() if name.startswith("GEN_AI_") and isinstance(value, str)}
    assert ours
    for name, value in ours.items():
        assert getattr(gen_ai_attributes, name) == value, name
    assert sc.ERROR_TYPE == error_attributes.ERROR_TYPE
    assert (sc.SERVER_ADDRESS, sc.SERVER_PORT) == (server_attributes.SERVER_ADDRESS, server_attributes.SERVER_PORT)


def test_well_known_values_and_metric_names():
    ops = {v.value for v in gen_ai_attributes.GenAiOperationNameValues}
    assert {sc.OP_INVOKE_AGENT, sc.OP_CHAT, sc.OP_EXECUTE_TOOL} <= ops
    providers = {v.value for v in gen_ai_attributes.GenAiProviderNameValues}
    assert {sc.PROVIDER_OPENAI, sc.PROVIDER_AZURE_OPENAI} <= providers
    # Prometheus names are the OTel names normalised: dots → underscores, unit `s` → `_seconds`.
    def prometheus(otel_name: str, unit: str = "") -> str:
        return otel_name.replace(".", "_") + unit

    assert prometheus(gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE) == sc.TOKEN_USAGE_METRIC
    assert prometheus(gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION, "_seconds") == sc.OPERATION_DURATION_METRIC
    assert prometheus(gen_ai_metrics.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK, "_seconds") == (
        sc.TIME_TO_FIRST_CHUNK_METRIC)
    assert set(sc.TOOL_TYPES.values()) == {"function", "extension", "datastore"}


def test_provider_is_azure_for_openai_paths_only():
    assert sc.provider_for_path("/openai/threads/runs") == "azure.ai.openai"
    assert sc.provider_for_path("/v1/threads/runs") == "openai"
    assert sc.provider_for_path("/openaiish") == "openai"


def test_error_type_of_a_create_that_made_no_run():
    assert sc.exchange_error_type(400, "completed") == "400"
    assert sc.exchange_error_type(502, "upstream_error") == "502"
    assert sc.exchange_error_type(200, "truncated") == "truncated"
    assert sc.exchange_error_type(200, "completed") == "_OTHER"


def test_finish_reasons():
    assert sc.finish_reason("completed", None) == "stop"
    assert sc.finish_reason("incomplete", "max_completion_tokens") == "length"
    assert sc.finish_reason("incomplete", "content_filter") == "content_filter"
    assert sc.finish_reason("failed", None) is None


def test_record_error_sets_type_and_status():
    span = SpanRecord("x", SpanKind.INTERNAL, 1, 2, 0, False, True, 0, {})
    sc.record_error(span, "server_error", "The model crashed.")
    assert span.attributes[sc.ERROR_TYPE] == "server_error" and span.error == "The model crashed."
    sc.record_error(span, "expired")
    assert span.error == "expired"  # the status description defaults to the type


def test_content_follows_the_message_schemas():
    body = {"instructions": "Be brief.", "thread": {"messages": [
        {"role": "user", "content": "Hi"}, {"role": "user", "content": [{"type": "text", "text": "there"}]}]}}
    content = sc.input_content(body)
    assert orjson.loads(content[sc.GEN_AI_SYSTEM_INSTRUCTIONS]) == [{"type": "text", "content": "Be brief."}]
    assert orjson.loads(content[sc.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Hi"}]},
        {"role": "user", "parts": [{"type": "text", "content": "there"}]}]
    assert sc.input_content({"assistant_id": "asst_1"}) == {}
    assert orjson.loads(sc.output_messages("Sunny.")) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Sunny."}]}]
