"""Every setting the server takes from the environment, read and checked in one place."""

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting the server cannot use; the message says which and why."""


# The agent's system message: what a phone agent needs to be told.
DEFAULT_PROMPT = (
    "You are a helpful assistant on a phone call. The caller hears your answers read aloud "
    "by a voice, so answer in one to three short spoken sentences, in plain words: no "
    "lists, no markdown, no emoji. If you did not catch what the caller said, ask them to "
    "say it again."
)


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 5000
    log_level: str = "INFO"
    log_format: str = "console"
    auth_token: str | None = field(default=None, repr=False)  # a secret: never shown
    public_url: str | None = None
    max_message_bytes: int = 64 * 1024
    start_timeout: float = 10.0
    idle_timeout: float = 30.0
    recordings_dir: str | None = None
    speech_activity: bool = True
    metrics_token: str | None = field(default=None, repr=False)  # a secret: never shown
    dial_number: str | None = None
    transcribe: str | None = None  # a model name or directory, or a server's http(s):// base
    transcribe_model: str = "whisper-1"  # the model a transcription server is asked for
    transcribe_api_key: str | None = field(default=None, repr=False)  # a secret: never shown
    transcribe_concurrency: int | None = None  # default: a thread a core, or 4 requests
    transcribe_timeout: float = 30.0  # seconds a transcription server may take to answer
    transcribe_backlog_seconds: float = 30.0
    keywords: tuple = ()
    sentiment: bool = True
    agent: str | None = None  # "local", or a chat completions server's http(s):// base
    agent_model: str = "gpt-4o-mini"  # the model a chat server is asked for
    agent_api_key: str | None = field(default=None, repr=False)  # a secret: never shown
    agent_prompt: str = DEFAULT_PROMPT
    agent_greeting: str = "Hello! How can I help you today?"
    agent_history: int | None = None  # tokens of history a request carries (default: chat.py)
    agent_tools: str | None = None  # a module whose functions are the model's tools
    tools: tuple = ()  # functions given in Python: create_app(tools=[...])
    agent_transfer: tuple = ()  # (name, number or sip: URI) pairs: where transfer_call goes
    agent_filler: str = "One moment, please."  # said once when a tool is slow
    agent_tool_timeout: float = 10.0  # seconds a tool may take; then the model gets an error
    agent_digits_timeout: float = 2.0  # seconds after a key that end the keys pressed
    agent_max_calls: int | None = None  # agent calls at once; past it, the busy message
    agent_busy_message: str = "All our agents are busy right now. Please call again later."
    agent_patience: float = 1.5  # more seconds for a caller who paused mid-sentence (0: none)
    agent_idle: float = 0.0  # seconds of silence before "Are you still there?" (0: never)
    agent_idle_prompt: str = "Are you still there?"
    speak: str | None = None  # "local", or a speech server's http(s):// base
    speak_model: str = "tts-1"
    speak_voice: str = "alloy"
    speak_api_key: str | None = field(default=None, repr=False)  # a secret: never shown
    twilio_account_sid: str | None = None  # with TWILIO_AUTH_TOKEN: Twilio's REST API
    twilio_api_url: str = "https://api.twilio.com"
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    redis_stream: str = "mediastream:events"  # the Redis Stream every server appends to
    server_name: str | None = None  # how this server is named in the fleet's events
    drain_timeout: float = 1800.0  # 30 minutes: most calls end well within it
    read_interval: float = 0.1  # a one-way stream is read at most this often (0: per message)

    @classmethod
    def from_environ(cls, environ=None):
        """Read the settings from `environ` (default: the process environment)."""
        environ = os.environ if environ is None else environ
        config = cls(
            host=environ.get("HOST") or cls.host,
            port=_port(environ.get("PORT")),
            log_level=_log_level(environ.get("LOG_LEVEL")),
            log_format=_log_format(environ.get("LOG_FORMAT")),
            auth_token=environ.get("TWILIO_AUTH_TOKEN") or None,
            public_url=_public_url(environ.get("PUBLIC_URL")),
            max_message_bytes=_positive(
                environ.get("MAX_MESSAGE_BYTES"), "MAX_MESSAGE_BYTES", int, cls.max_message_bytes
            ),
            start_timeout=_positive(
                environ.get("START_TIMEOUT"), "START_TIMEOUT", float, cls.start_timeout
            ),
            idle_timeout=_positive(
                environ.get("IDLE_TIMEOUT"), "IDLE_TIMEOUT", float, cls.idle_timeout
            ),
            recordings_dir=_recordings_dir(environ.get("RECORDINGS_DIR")),
            speech_activity=_on_off(environ.get("SPEECH_ACTIVITY"), "SPEECH_ACTIVITY", True),
            metrics_token=environ.get("METRICS_TOKEN") or None,
            dial_number=(environ.get("DIAL_NUMBER") or "").strip() or None,
            transcribe=(environ.get("TRANSCRIBE") or "").strip() or None,
            transcribe_model=(environ.get("TRANSCRIBE_MODEL") or "").strip() or "whisper-1",
            transcribe_api_key=environ.get("TRANSCRIBE_API_KEY") or None,
            transcribe_concurrency=_positive(
                environ.get("TRANSCRIBE_CONCURRENCY"), "TRANSCRIBE_CONCURRENCY", int, None
            ),
            transcribe_timeout=_positive(
                environ.get("TRANSCRIBE_TIMEOUT"),
                "TRANSCRIBE_TIMEOUT",
                float,
                cls.transcribe_timeout,
            ),
            transcribe_backlog_seconds=_positive(
                environ.get("TRANSCRIBE_BACKLOG_SECONDS"),
                "TRANSCRIBE_BACKLOG_SECONDS",
                float,
                cls.transcribe_backlog_seconds,
            ),
            keywords=_keywords(environ.get("KEYWORDS")),
            agent=_service(environ.get("AGENT"), "AGENT", "a chat completions server"),
            agent_model=(environ.get("AGENT_MODEL") or "").strip() or cls.agent_model,
            agent_api_key=environ.get("AGENT_API_KEY") or None,
            agent_prompt=environ.get("AGENT_PROMPT") or cls.agent_prompt,
            agent_greeting=(environ.get("AGENT_GREETING") or "").strip() or cls.agent_greeting,
            agent_history=_positive(environ.get("AGENT_HISTORY"), "AGENT_HISTORY", int, None),
            agent_tools=(environ.get("AGENT_TOOLS") or "").strip() or None,
            agent_transfer=_destinations(environ.get("AGENT_TRANSFER")),
            agent_filler=(environ.get("AGENT_FILLER") or "").strip() or cls.agent_filler,
            agent_tool_timeout=_positive(
                environ.get("AGENT_TOOL_TIMEOUT"),
                "AGENT_TOOL_TIMEOUT",
                float,
                cls.agent_tool_timeout,
            ),
            agent_digits_timeout=_positive(
                environ.get("AGENT_DIGITS_TIMEOUT"),
                "AGENT_DIGITS_TIMEOUT",
                float,
                cls.agent_digits_timeout,
            ),
            agent_max_calls=_positive(environ.get("AGENT_MAX_CALLS"), "AGENT_MAX_CALLS", int, None),
            agent_busy_message=(environ.get("AGENT_BUSY_MESSAGE") or "").strip()
            or cls.agent_busy_message,
            agent_patience=_seconds_or_off(
                environ.get("AGENT_PATIENCE"), "AGENT_PATIENCE", cls.agent_patience
            ),
            agent_idle=_seconds_or_off(environ.get("AGENT_IDLE"), "AGENT_IDLE"),
            agent_idle_prompt=(environ.get("AGENT_IDLE_PROMPT") or "").strip()
            or cls.agent_idle_prompt,
            speak=_service(environ.get("SPEAK"), "SPEAK", "a speech server"),
            speak_model=(environ.get("SPEAK_MODEL") or "").strip() or cls.speak_model,
            speak_voice=(environ.get("SPEAK_VOICE") or "").strip() or cls.speak_voice,
            speak_api_key=environ.get("SPEAK_API_KEY") or None,
            twilio_account_sid=_account_sid(environ.get("TWILIO_ACCOUNT_SID")),
            twilio_api_url=_twilio_api_url(environ.get("TWILIO_API_URL")),
            redis_url=_redis_url(environ.get("REDIS_URL")),
            redis_stream=(environ.get("REDIS_STREAM") or "").strip() or cls.redis_stream,
            server_name=(environ.get("SERVER_NAME") or "").strip() or None,
            sentiment=_on_off(environ.get("SENTIMENT"), "SENTIMENT", True),
            read_interval=_read_interval(environ.get("READ_INTERVAL")),
            drain_timeout=_positive(
                environ.get("DRAIN_TIMEOUT"), "DRAIN_TIMEOUT", float, cls.drain_timeout
            ),
        )
        if config.transcribe and config.transcribe.startswith(("http:", "https:")):
            _transcription_url(config.transcribe)
        if config.transcribe and not config.speech_activity:
            raise ConfigError("TRANSCRIBE needs SPEECH_ACTIVITY on: it cuts the utterances")
        return config


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


def _log_format(text):
    if not text:
        return Config.log_format
    if text.lower() not in ("console", "json"):
        raise ConfigError(f"LOG_FORMAT must be json (or console, the default), not {text!r}")
    return text.lower()


def _public_url(text):
    """The scheme and host Twilio connects to, such as wss://abc.ngrok.app."""
    if not text:
        return None
    parts = urlsplit(text.strip())
    if parts.scheme not in ("wss", "ws") or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigError(
            f"PUBLIC_URL must be a scheme and host only, like wss://abc.ngrok.app "
            f"(the request's path is added to it), not {text!r}"
        )
    return f"{parts.scheme}://{parts.netloc}"


def _positive(text, name, kind, default):
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise ConfigError(f"{name} must be a positive number, not {text!r}")
    return value


def _on_off(text, name, default):
    if not text:
        return default
    if text.lower() not in ("on", "off"):
        raise ConfigError(f"{name} must be on or off, not {text!r}")
    return text.lower() == "on"


def _transcription_url(text):
    """A transcription server's base URL: scheme and host, and a path (such as /v1)."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(
            f"TRANSCRIBE must be a model name, a directory, or a server's base URL like "
            f"http://asr.internal:8000/v1, not {text!r}"
        )


def _service(text, name, what):
    """AGENT or SPEAK: local (the embedded default), or a server's base URL."""
    text = (text or "").strip()
    if not text or text == "local":
        return text or None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(
            f"{name} must be local, or {what}'s base URL like http://127.0.0.1:8000/v1, "
            f"not {text!r}"
        )
    return text.rstrip("/")


def _seconds_or_off(text, name, default=0.0):
    """Seconds, or 0 (off)."""
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1
    if not seconds >= 0:
        raise ConfigError(f"{name} must be seconds (0: off), not {text!r}")
    return seconds


def _destination(text, name):
    if re.fullmatch(r"\+[1-9]\d{6,14}", text) or re.fullmatch(r"sip:[^@\s]+@[^@\s]+", text):
        return text
    raise ConfigError(
        f"AGENT_TRANSFER: {text!r} is not a destination (a number in E.164 form, +15550100, "
        f"or a sip: URI, sip:help@example.com){f' (for {name})' if name else ''}"
    )


def _destinations(text):
    """AGENT_TRANSFER: one destination, or several by name (name=destination, comma-
    separated): ((name, destination), ...); one alone is named by itself."""
    text = (text or "").strip()
    if not text:
        return ()
    if "=" not in text:
        return ((text, _destination(text, None)),)
    pairs = []
    for item in text.split(","):
        name, _, destination = (part.strip() for part in item.partition("="))
        if not re.fullmatch(r"[A-Za-z][\w-]*", name):
            raise ConfigError(
                f"AGENT_TRANSFER must be one destination, or name=destination pairs "
                f"(sales=+15550100,support=sip:help@example.com), not {text!r}"
            )
        pairs.append((name, _destination(destination, name)))
    return tuple(pairs)


def _account_sid(text):
    text = (text or "").strip()
    if text and not re.fullmatch(r"AC[0-9a-fA-F]{32}", text):
        raise ConfigError(f"TWILIO_ACCOUNT_SID must be AC and 32 hex digits, not {text!r}")
    return text or None


def _twilio_api_url(text):
    """Twilio's REST API host (a regional edge, a proxy, a test stand-in): scheme and host."""
    text = (text or "").strip().rstrip("/")
    if not text:
        return Config.twilio_api_url
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(
            f"TWILIO_API_URL must be a URL like https://api.dublin.ie1.twilio.com, not {text!r}"
        )
    return text


def _redis_url(text):
    """A Redis server's URL, as redis-py takes it: redis://, rediss:// or unix://."""
    text = (text or "").strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ConfigError(  # (not echoed: it may hold a password)
            "REDIS_URL must be a Redis server's URL: redis://redis.internal:6379/0, "
            "rediss:// (TLS) or unix:///path/to/redis.sock"
        )
    return text


def _read_interval(text):
    """Seconds between reads of a one-way stream: 0 (each message at once) to 0.2."""
    if not text:
        return Config.read_interval
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1
    if not 0 <= seconds <= 0.2:
        raise ConfigError(f"READ_INTERVAL must be seconds from 0 to 0.2, not {text!r}")
    return seconds


def _keywords(text):
    """Words or phrases, comma-separated: lower case, one space between words, no repeats."""
    if not text:
        return ()
    phrases = dict.fromkeys(" ".join(phrase.split()).lower() for phrase in text.split(","))
    phrases.pop("", None)
    if not phrases:
        raise ConfigError(f"KEYWORDS must list words or phrases, comma-separated, not {text!r}")
    return tuple(phrases)


def _recordings_dir(text):
    """The directory, made if missing and tried with a file: a bad one is said at startup."""
    if not text:
        return None
    directory = Path(text).resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise ConfigError(
            f"RECORDINGS_DIR {text!r} is not a directory this server can write to "
            f"({error.strerror})"
        ) from None
    return str(directory)
