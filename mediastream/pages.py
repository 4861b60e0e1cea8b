"""What the server answers over plain HTTP: a page for a person checking their tunnel.

Opening the ngrok URL in a browser (or with curl) is the first thing people try. `/` and
a plain GET of `/media` both say what this server is and the wss:// URL Twilio should
connect to, and the console logs the visit.
"""

import logging

from mediastream.security import public_base
from mediastream.websocket import client_address

log = logging.getLogger("mediastream")

PAGE = """Twilio Media Streams server

This server receives the live audio of phone calls from Twilio Media Streams,
over a WebSocket. Twilio should connect to:

    {url}

Put that URL in your TwiML, for example:

    <Response><Start><Stream url="{url}"/></Start><Dial>+15550100000</Dial></Response>
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
    return PAGE.format(url=url), status, headers
