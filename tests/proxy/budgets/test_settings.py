import pytest

from proxy.budgets.settings import LIMITS, BudgetLimits, BudgetsSettings, KeyBudget
from proxy.config import load_settings
from proxy.errors import ConfigError

KEY = "sha256:0123456789abcdef"


def test_the_documented_example_loads(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[budgets]\nunknown_keys = "default"\ndefault_reservation_tokens = 2048\n\n'
                      "[budgets.default]\ntokens_per_hour = 1000\n\n"
                      f'[[budgets.keys]]\nkey_id = "{KEY}"\nalias = "team-a"\ntokens_per_day = 200000\n'
                      "usd_per_30d = 50.0\nclamp = true\n")
    budgets = load_settings(config, env={}).budgets
    assert budgets.unknown_keys == "default" and budgets.default_reservation_tokens == 2048
    assert budgets.default.limits() == {"tokens_per_hour": 1000}
    [key] = budgets.keys
    assert (key.key_id, key.alias, key.clamp, key.cancel_on_exhaustion) == (KEY, "team-a", True, False)
    assert key.limits() == {"tokens_per_day": 200000, "usd_per_30d": 50.0}


def test_limits_are_listed_in_window_order_and_zero_means_none():
    assert BudgetLimits().limits() == {}
    assert not BudgetLimits(usd_per_day=1.0).token_limited
    every = BudgetLimits(**{name: 7 for name in LIMITS})
    assert list(every.limits()) == list(LIMITS) and every.token_limited


@pytest.mark.parametrize("entry, problem", [
    ({"key_id": "sk-raw-key", "alias": "a"}, "key_id must look like"),
    ({"key_id": KEY, "alias": "other"}, "alias must be"),
    ({"key_id": KEY, "alias": "has space"}, "alias must be"),
    ({"key_id": KEY, "alias": "a", "tokens_per_day": -1}, "greater than or equal"),
    ({"key_id": KEY, "alias": "a", "token_per_day": 1}, "Extra inputs"),
])
def test_a_bad_key_entry_is_refused(entry, problem):
    with pytest.raises(ValueError, match=problem):
        KeyBudget.model_validate(entry)


def test_duplicate_keys_or_aliases_are_a_config_error(tmp_path):
    config = tmp_path / "c.toml"
    entry = f'[[budgets.keys]]\nkey_id = "{KEY}"\nalias = "a"\n'
    config.write_text(entry + entry.replace('"a"', '"b"'))
    with pytest.raises(ConfigError, match="key_id sha256:0123456789abcdef appears more than once"):
        load_settings(config, env={})
    with pytest.raises(ValueError, match="alias a appears more than once"):
        BudgetsSettings.model_validate({"keys": [{"key_id": KEY, "alias": "a"},
                                                 {"key_id": "sha256:fedcba9876543210", "alias": "a"}]})
