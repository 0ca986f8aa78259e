import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from proxy.config import Settings, load_settings, parse_hostport
from proxy.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config.example.toml"


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, field


def test_example_config_loads_and_equals_the_defaults():
    assert load_settings(EXAMPLE, env={}) == Settings()


def test_every_setting_is_documented_in_the_example_with_a_description():
    text = EXAMPLE.read_text()
    for dotted, field in _fields(Settings):
        section, _, name = dotted.rpartition(".")
        assert f"[{section}]" in text, section
        assert re.search(rf"^{re.escape(name)} = ", text, re.M), f"{dotted} missing from config.example.toml"
        assert field.description, f"{dotted} has no description"


def test_flags_beat_env_beat_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[server]\nupstream = "http://file"\nlisten = "127.0.0.1:1"\n[recorder]\ndb = "f.duckdb"\n')
    env = {"RUNTAP_UPSTREAM": "http://env", "RUNTAP_DB": "e.duckdb"}
    settings = load_settings(config, env=env, overrides={"server": {"upstream": "http://flag", "listen": None}})
    assert settings.server.upstream == "http://flag"
    assert settings.server.listen == "127.0.0.1:1"
    assert settings.recorder.db == "e.duckdb"
    assert load_settings(None, env={"RUNTAP_CONFIG": str(config)}).server.upstream == "http://file"


def test_unknown_or_out_of_bounds_settings_are_refused(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[server]\nlisten_on = 1\n")
    with pytest.raises(ConfigError, match="listen_on"):
        load_settings(config, env={})
    config.write_text("[timeouts]\nread_s = -1\n")
    with pytest.raises(ConfigError, match="read_s"):
        load_settings(config, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", env={})


def test_parse_hostport():
    assert parse_hostport("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_hostport("[::1]:9464") == ("::1", 9464)
    with pytest.raises(ConfigError):
        parse_hostport("localhost")
