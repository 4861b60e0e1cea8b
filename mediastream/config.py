"""Every setting the server takes from the environment, read and checked in one place."""

import logging
import os
from dataclasses import dataclass


class ConfigError(ValueError):
    """A setting in the environment that the server cannot use; the message says which and why."""


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 5000
    log_level: str = "INFO"

    @classmethod
    def from_environ(cls, environ=None):
        """Read the settings from `environ` (default: the process environment)."""
        environ = os.environ if environ is None else environ
        return cls(
            host=environ.get("HOST") or cls.host,
            port=_port(environ.get("PORT")),
            log_level=_log_level(environ.get("LOG_LEVEL")),
        )


def _port(text):
    if not text:
        return Config.port
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(f"PORT must be a number from 0 to 65535, not {text!r}")
    return int(text)


def _log_level(text):
    if not text:
        return Config.log_level
    level = text.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ConfigError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, not {text!r}")
    return level
