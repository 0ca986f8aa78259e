import hashlib

from proxy.keys import fingerprint, key_id_from_headers

RAW = "sk-test-0123456789abcdefghijklmnop"


def test_fingerprint_is_the_contract_format():
    assert fingerprint(RAW) == "sha256:" + hashlib.sha256(RAW.encode()).hexdigest()[:16]
    assert RAW not in fingerprint(RAW)


def test_key_from_bearer_or_azure_api_key():
    assert key_id_from_headers({"Authorization": f"Bearer {RAW}"}) == fingerprint(RAW)
    assert key_id_from_headers({"api-key": RAW}) == fingerprint(RAW)
    assert key_id_from_headers({"Authorization": f"bearer  {RAW} "}) == fingerprint(RAW)


def test_no_or_unusable_key():
    assert key_id_from_headers({}) is None
    assert key_id_from_headers({"Authorization": "Basic abc"}) is None
    assert key_id_from_headers({"Authorization": "Bearer "}) is None
