"""The operator's pages: /calls (every call, live) and /phone (a softphone), as a blueprint.

- `/calls` and `/phone` serve static HTML; their JavaScript and CSS come from /browser/
  (this package's static/ folder: no build step, nothing from a CDN).
- `/calls/events` is the pages' Server-Sent Events stream (events.py): a `snapshot` first,
  then what the board (live.py) has for this page, each as one `event:`/`data:` message;
  `?stream=<streamSid>` follows one call (the softphone's own panel).
- `POST /phone/credential`: with TWILIO_AUTH_TOKEN set, a single-use credential the
  softphone's handshake to /media carries in place of Twilio's signature.

Only the operator gets in (security.operator_refusal): from this machine, or with
METRICS_TOKEN. In a browser elsewhere, open `/calls?token=<METRICS_TOKEN>` once: the
server sets a cookie that stands for the token and sends the browser on to /calls.
"""

import hmac
import logging

from flask import Blueprint, Response, current_app, redirect, request

from mediastream.browser.events import event_stream
from mediastream.browser.live import BOARD
from mediastream.fleet import follow_fleet
from mediastream.security import OPERATOR_COOKIE, operator_cookie, operator_refusal
from mediastream.websocket import client_address

log = logging.getLogger("mediastream")


def browser_pages(config, connections, credentials=None, board=BOARD):
    """The blueprint of the operator's pages, for create_app to register. In a fleet
    (REDIS_URL), the board follows the other servers' calls too."""
    if config.redis_url:
        follow_fleet(config, board)
    pages = Blueprint("browser", __name__, static_folder="static", static_url_path="/browser")

    @pages.before_request
    def only_the_operator():
        if request.endpoint == "browser.static":
            return None  # the pages' code and style: nothing secret
        token = config.metrics_token
        given = request.args.get("token", "")
        if token and request.method == "GET" and hmac.compare_digest(given, token):
            return _remember_operator(token)
        refusal = operator_refusal(request.environ, token, request.cookies)
        if refusal:
            log.warning(
                "[%s] %s refused (403 Forbidden): %s",
                client_address(request.environ),
                request.path,
                refusal,
            )
            return f"{refusal}\n", 403, {"Content-Type": "text/plain"}
        return None

    @pages.get("/calls")
    def calls():
        return pages.send_static_file("calls.html")

    @pages.get("/phone")
    def phone():
        return pages.send_static_file("phone.html")

    @pages.get("/calls/events")
    def events():
        stream_sid = request.args.get("stream") or None
        log.info(
            "[%s] %s page opened its live events",
            client_address(request.environ),
            "a softphone" if stream_sid else "the calls",
        )
        return Response(
            event_stream(board, stream_sid, connections, current_app.extensions.get("calls_peers")),
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            mimetype="text/event-stream",
        )

    @pages.post("/phone/credential")
    def phone_credential():
        # Without TWILIO_AUTH_TOKEN, /media takes any handshake: nothing to carry.
        return {"credential": credentials.issue() if credentials else None}

    return pages


def _remember_operator(token):
    """A ?token= visit: set the cookie that stands for the token, and drop it from the URL."""
    response = redirect(request.path)
    response.set_cookie(
        OPERATOR_COOKIE,
        operator_cookie(token),
        httponly=True,
        samesite="Strict",
        secure=request.headers.get("X-Forwarded-Proto", request.scheme) == "https",
    )
    return response
