"""What the server answers over plain HTTP to people and load balancers.

- `/` and a plain GET of `/media`: opening the ngrok URL in a browser (or with curl) is
  the first thing people try. Both say what this server is, the wss:// URL Twilio
  should connect to and where the operator's pages are, and the console logs the visit.
- `/healthz`: for a load balancer: 200 while the server takes calls, 503 once it is
  draining or shutting down, with a tiny JSON body (open streams, uptime) and no call data.
"""

import logging
import time

from mediastream.security import https_base, public_base
from mediastream.websocket import client_address

log = logging.getLogger("mediastream")

PAGE = """Twilio Media Streams server

This server receives the live audio of phone calls from Twilio Media Streams,
over a WebSocket. Twilio should connect to:

    {url}

Put that URL in your TwiML, for example:

    <Response><Start><Stream url="{url}"/></Start><Dial>+15550100000</Dial></Response>

Watch every call live at {site}/calls, or call from this browser at {site}/phone
(from this machine; from elsewhere, add ?token=<METRICS_TOKEN> once).
"""


def about(environ, config):
    """The page, as (body, status, headers); `/media` gets 426: it wants a WebSocket."""
    url = public_base(environ, config.public_url) + "/media"
    path = environ.get("PATH_INFO", "")
    websocket_route = path == "/media"
    log.info(
        "[%s] HTTP GET %s%s: this server takes Twilio's WebSocket at %s",
        client_address(environ),
        path,
        " without a WebSocket handshake" if websocket_route else "",
        url,
    )
    status = 426 if websocket_route else 200
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if websocket_route:
        headers["Upgrade"] = "websocket"
    site = https_base(environ, config.public_url)
    return PAGE.format(url=url, site=site), status, headers


def health(connections, started_at, busy=None):
    """/healthz: (body, status). 503 while draining or shutting down, and while `busy`
    says why the server takes no more agent calls (AGENT_MAX_CALLS): a load balancer
    then sends new calls elsewhere."""
    state = connections.state  # ok, draining, shutting down
    body = {
        "status": "busy" if busy and state == "ok" else state,
        "open_streams": len(connections),
        "uptime_seconds": round(time.monotonic() - started_at, 1),
    }
    if body["status"] == "busy":
        body["reason"] = busy
    return body, 200 if body["status"] == "ok" else 503
