"""The baseline: the receive loop of Twilio's tutorial app.py, as it behaves when published.

Rewritten here with the one change it needs to run at all on today's Werkzeug: the
/media rule is registered with websocket=True. Everything else keeps the tutorial's
behaviour: gevent-websocket's own ws.receive(), json.loads of every message, INFO logs
for connected/start and the first media message only, a loop that ends at stop.
"""

import base64
import json
import logging
import os

from flask import Flask
from flask_sockets import Sockets
from werkzeug.routing import Rule

app = Flask(__name__)
sockets = Sockets(app)


def media(ws):
    app.logger.info("Connection accepted")
    has_seen_media = False
    message_count = 0
    while not ws.closed:
        message = ws.receive()
        if message is None:
            app.logger.info("No message received...")
            continue
        data = json.loads(message)
        if data["event"] == "connected":
            app.logger.info(f"Connected Message received: {message}")
        if data["event"] == "start":
            app.logger.info(f"Start Message received: {message}")
        if data["event"] == "media" and not has_seen_media:
            app.logger.info(f"Media message: {message}")
            payload = data["media"]["payload"]
            app.logger.info(f"Payload is: {payload}")
            chunk = base64.b64decode(payload)
            app.logger.info(f"That's {len(chunk)} bytes")
            app.logger.info("Additional media messages from WebSocket are being suppressed....")
            has_seen_media = True
        if data["event"] == "stop":
            app.logger.info(f"Stop Message received: {message}")
            break
        message_count += 1
    app.logger.info(f"Connection closed. Received a total of {message_count} messages")


# The fix: flask-sockets would add Rule("/media"), which Werkzeug refuses for WebSockets.
sockets.url_map.add(Rule("/media", endpoint=media, websocket=True))

if __name__ == "__main__":
    app.logger.setLevel(logging.DEBUG)
    from gevent import pywsgi
    from geventwebsocket.handler import WebSocketHandler

    port = int(os.environ.get("PORT", "5000"))
    server = pywsgi.WSGIServer(("127.0.0.1", port), app, handler_class=WebSocketHandler)
    print(f"Server listening on: http://localhost:{port}", flush=True)
    server.serve_forever()
