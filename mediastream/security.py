"""The handshake check: with TWILIO_AUTH_TOKEN set, only Twilio gets in.

Twilio signs every Media Streams WebSocket handshake: X-Twilio-Signature is the
base64 HMAC-SHA1, keyed with the account's auth token, of the wss:// URL it connected
to. We check it with the twilio helper library's RequestValidator, before the
WebSocket is accepted.
"""

import logging
from urllib.parse import quote

from twilio.request_validator import RequestValidator

log = logging.getLogger("mediastream")
startup = logging.getLogger("mediastream.startup")


class SignatureCheck:
    """Decides, from a handshake's headers, whether Twilio signed it."""

    def __init__(self, auth_token, public_url=None):
        self.validator = RequestValidator(auth_token)
        self.public_url = public_url

    def refusal(self, environ):
        """Why the handshake must be refused, or None when Twilio signed it."""
        signature = environ.get("HTTP_X_TWILIO_SIGNATURE")
        if not signature:
            return "no X-Twilio-Signature header"
        url = self.signed_url(environ)
        if not self.validator.validate(url, {}, signature):
            source = "PUBLIC_URL" if self.public_url else "the request's Host; set PUBLIC_URL"
            return f"X-Twilio-Signature does not match {url} (from {source})"
        return None

    def signed_url(self, environ):
        """The URL Twilio signed: the public wss:// URL of this request."""
        base = public_base(environ, self.public_url)
        path = quote(environ.get("PATH_INFO", "").encode("latin-1"), safe="/:@!$&'()*+,;=~")
        query = environ.get("QUERY_STRING")
        return f"{base}{path}?{query}" if query else f"{base}{path}"


def public_base(environ, public_url=None):
    """The scheme and host Twilio connects to: PUBLIC_URL if set, else wss://host as this
    request's client saw it, through ngrok or another proxy where there is one."""
    if public_url:
        return public_url
    proto = _first(environ.get("HTTP_X_FORWARDED_PROTO")) or "http"
    host = _first(environ.get("HTTP_X_FORWARDED_HOST")) or environ.get("HTTP_HOST", "")
    scheme = "wss" if proto in ("https", "wss") else "ws"
    return f"{scheme}://{host}"


def https_base(environ, public_url=None):
    """The https:// scheme and host of this server as Twilio reaches it (for webhooks)."""
    base = public_base(environ, public_url)
    return base.replace("wss://", "https://", 1).replace("ws://", "http://", 1)


def webhook_refusal(environ, form, auth_token, public_url=None):
    """Why a webhook request (a form POST, or a GET) from Twilio must be refused, or None.

    Twilio signs the full URL it requested and, for a POST, its form parameters (sorted
    by name, each name followed by its value); RequestValidator checks exactly that."""
    signature = environ.get("HTTP_X_TWILIO_SIGNATURE")
    if not signature:
        return "no X-Twilio-Signature header"
    path = quote(environ.get("PATH_INFO", "").encode("latin-1"), safe="/:@!$&'()*+,;=~")
    query = environ.get("QUERY_STRING")
    url = https_base(environ, public_url) + path + (f"?{query}" if query else "")
    if not RequestValidator(auth_token).validate(url, form, signature):
        return f"X-Twilio-Signature does not match {url} and its parameters"
    return None


def _first(header):
    """The first value of a comma-separated proxy header (the client's side)."""
    return header.split(",")[0].strip() if header else None


def signature_check(config):
    """The handshake check for `config` (see Sockets), said at startup; None without a token."""
    if not config.auth_token:
        log.warning(
            "TWILIO_AUTH_TOKEN is not set: handshakes are not checked; anyone with the URL "
            "can stream in"
        )
        return None
    where = config.public_url or "the request's Host and X-Forwarded-* headers"
    startup.info("X-Twilio-Signature required on every handshake; signed URL from %s", where)
    return SignatureCheck(config.auth_token, config.public_url).refusal
