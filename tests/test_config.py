"""Settings from the environment, read and checked in one place."""

import pytest

from mediastream.config import Config, ConfigError


def test_defaults_serve_the_tutorial_on_port_5000():
    assert Config.from_environ({}) == Config(host="0.0.0.0", port=5000, log_level="INFO")


def test_settings_come_from_the_environment():
    config = Config.from_environ({"HOST": "127.0.0.1", "PORT": "8080", "LOG_LEVEL": "debug"})
    assert config == Config(host="127.0.0.1", port=8080, log_level="DEBUG")


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"PORT": "http"}, "PORT must be a number from 0 to 65535, not 'http'"),
        ({"PORT": "70000"}, "PORT must be a number"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of"),
        ({"KEYWORDS": " , ,"}, "KEYWORDS must list words or phrases, comma-separated"),
        ({"SENTIMENT": "maybe"}, "SENTIMENT must be on or off"),
    ],
)
def test_bad_settings_are_named_in_the_error(environ, message):
    with pytest.raises(ConfigError) as problem:
        Config.from_environ(environ)
    assert message in str(problem.value)


def test_keywords_are_phrases_in_lower_case_each_once():
    config = Config.from_environ({"KEYWORDS": "Refund, credit   card,,REFUND , cancel"})
    assert config.keywords == ("refund", "credit card", "cancel")
