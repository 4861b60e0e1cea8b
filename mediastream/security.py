"""Who gets in: Twilio on /media and the webhooks, the operator on the pages and metrics.

- Twilio signs every Media Streams WebSocket handshake: X-Twilio-Signature is the base64
  HMAC-SHA1, keyed with the account's auth token, of the wss:// URL it connected to. With
  TWILIO_AUTH_TOKEN set, we check it with the twilio helper library's RequestValidator,
  before the WebSocket is accepted. The one other way in is the operator's softphone
  (/phone): its page gets a short-lived, single-use credential (PageCredentials) that
  /media takes in place of a signature.
- The operator's pages (/calls, /phone) and /metrics: a request from this machine
  (loopback) that no proxy forwarded (ngrok adds X-Forwarded-For), or one that carries
  METRICS_TOKEN, the operator's token.
"""

import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from urllib.parse import parse_qs, quote

from twilio.request_validator import RequestValidator

log = logging.getLogger("mediastream")
startup = logging.getLogger("mediastream.startup")


PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_HOST", "HTTP_FORWARDED")
OPERATOR_COOKIE = "mediastream_operator"
CREDENTIAL_SECONDS = 30  # a softphone page's credential is good for one handshake this soon


class SignatureCheck:
    """Decides, from a handshake's headers, whether Twilio signed it (or the operator's
    softphone holds a page credential)."""

    def __init__(self, auth_token, public_url=None, credentials=None):
        self.validator = RequestValidator(auth_token)
        self.public_url = public_url
        self.credentials = credentials

    def refusal(self, environ):
        """Why the handshake must be refused, or None when Twilio signed it."""
        signature = environ.get("HTTP_X_TWILIO_SIGNATURE")
        credential = parse_qs(environ.get("QUERY_STRING", "")).get("credential")
        if not signature and credential and self.credentials:
            problem = self.credentials.redeem(credential[0])
            return f"page credential {problem}" if problem else None
        if not signature:
            return "no X-Twilio-Signature header (nor a softphone page's credential)"
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


class PageCredentials:
    """Short-lived, single-use credentials for the softphone's handshake to /media.

    Stateless to check (an HMAC keyed from TWILIO_AUTH_TOKEN, so any gunicorn worker can);
    single use within a process: each one's nonce is remembered until it expires."""

    def __init__(self, auth_token, clock=time.time):
        self.key = hmac.digest(auth_token.encode(), b"softphone page credential", "sha256")
        self.clock = clock
        self.used = {}  # nonce -> when it expires

    def issue(self):
        expires = int(self.clock()) + CREDENTIAL_SECONDS
        nonce = secrets.token_hex(8)
        return f"{expires}.{nonce}.{self._mac(expires, nonce)}"

    def redeem(self, credential):
        """Why `credential` is refused, or None (and it is used up)."""
        try:
            expires, nonce, mac = credential.split(".")
            expires = int(expires)
        except ValueError:
            return "is malformed"
        if not hmac.compare_digest(mac, self._mac(expires, nonce)):
            return "is not one this server issued"
        now = self.clock()
        self.used = {n: until for n, until in self.used.items() if until >= now}
        if expires < now:
            return "has expired"
        if nonce in self.used:
            return "was used already"
        self.used[nonce] = expires
        return None

    def _mac(self, expires, nonce):
        return hmac.new(self.key, f"{expires}.{nonce}".encode(), "sha256").hexdigest()


def from_this_machine(environ):
    """A request from loopback that no proxy forwarded (ngrok's come from loopback too)."""
    try:
        loopback = ipaddress.ip_address(environ.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False
    return loopback and not any(header in environ for header in PROXY_HEADERS)


def bearer_matches(environ, token):
    """Whether the request carries `Authorization: Bearer <token>`."""
    given = environ.get("HTTP_AUTHORIZATION", "").encode()
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def operator_cookie(token):
    """The cookie value that stands for the operator's token in a browser (not the token)."""
    return hmac.new(token.encode(), b"operator pages", hashlib.sha256).hexdigest()


def operator_refusal(environ, token, cookies):
    """Why a request may not open the operator's pages, or None: from this machine, or with
    the token (as a bearer, or the cookie a ?token= visit set)."""
    if from_this_machine(environ):
        return None
    if token and (
        bearer_matches(environ, token)
        or hmac.compare_digest(cookies.get(OPERATOR_COOKIE, ""), operator_cookie(token))
    ):
        return None
    if token:
        return "the operator's pages need METRICS_TOKEN (open the page once with ?token=...)"
    return (
        "the operator's pages are served to this machine only; "
        "set METRICS_TOKEN to open them from elsewhere"
    )


def signature_check(config, credentials=None):
    """The handshake check for `config` (see Sockets), said at startup; None without a token."""
    if not config.auth_token:
        log.warning(
            "TWILIO_AUTH_TOKEN is not set: handshakes are not checked; anyone with the URL "
            "can stream in"
        )
        return None
    where = config.public_url or "the request's Host and X-Forwarded-* headers"
    startup.info("X-Twilio-Signature required on every handshake; signed URL from %s", where)
    return SignatureCheck(config.auth_token, config.public_url, credentials).refusal
