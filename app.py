"""Consume a real-time Twilio Media Stream over a WebSocket, with Flask.

Twilio's tutorial server, grown up: run `python app.py`, expose port 5000 with
`ngrok http 5000`, point a TwiML <Stream url="wss://<ngrok host>/media"/> at it, call
your number and watch the console. Each call's stream arrives on /media as JSON text
messages: connected, start, media (base64 mu-law audio), dtmf, mark and stop.
"""

import signal
import sys

import gevent
from flask import Flask
from gevent import pywsgi

from mediastream import console
from mediastream.config import Config, ConfigError
from mediastream.messages import (
    BadMessage,
    Connected,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    parse_message,
)
from mediastream.recording import Recording
from mediastream.security import signature_check
from mediastream.stream import NOTHING_MISSING, MediaStream
from mediastream.websocket import (
    Connection,
    MediaStreamHandler,
    OpenConnections,
    Sockets,
    client_address,
)


def create_app(config=None):
    """The Flask app with its /media WebSocket route (Flask's factory convention)."""
    app = Flask(__name__)
    app.config["MEDIASTREAM"] = config = config or Config.from_environ()
    app.extensions["connections"] = connections = OpenConnections()
    sockets = Sockets(app, check=signature_check(config))

    @sockets.route("/media")
    def media(ws):
        """One Media Stream: read its messages until the connection ends."""
        stream = MediaStream(client_address(ws.environ))
        connection = Connection(ws, config.max_message_bytes)
        recording = Recording(config.recordings_dir)
        connections.add(connection)
        console.connection_opened(stream)
        # A connection that never says which stream it is would only hold a socket open.
        start_deadline = connection.deadline(config.start_timeout, "no start message")
        try:
            for message in connection.messages():
                receive(stream, recording, message)
                if stream.stream_sid:
                    start_deadline.cancel()
        finally:
            start_deadline.cancel()
            connections.discard(connection)
            if connection.problem:
                console.connection_problem(stream, connection.problem)
            console.summary(
                stream, "stop" if stream.stopped else connection.ended_by, recording.close()
            )

    return app


def receive(stream, recording, message):
    """Decode one message from Twilio and act on its event."""
    if not isinstance(message, str):
        stream.bad_messages += 1
        console.bad_message(stream, f"binary frame of {len(message)} bytes")
        return
    try:
        event = parse_message(message)
    except BadMessage as problem:
        stream.bad_messages += 1
        console.bad_message(stream, problem)
        return
    # Twilio numbers every message and each track's chunks: a hole is a lost message.
    lost_messages = stream.check_sequence(event.sequence)
    lost_chunks = stream.add_media(event) if isinstance(event, Media) else NOTHING_MISSING
    if lost_messages or lost_chunks:
        console.gap(stream, event, lost_messages, lost_chunks)

    if isinstance(event, Media):
        # event.audio holds the decoded mu-law bytes: hand them to your transcriber here.
        console.media(stream, event)
        problem = recording.add(event)
        if problem:
            console.recording_failed(stream, problem)
        if stream.progress_due():
            console.progress(stream)
    elif isinstance(event, Connected):
        console.connected(stream, event)
    elif isinstance(event, Start):
        stream.start(event)
        recording.start(event.stream_sid)
        console.started(stream, event)
    elif isinstance(event, Dtmf):
        console.dtmf(stream, event)
    elif isinstance(event, Mark):
        console.mark(stream, event)
    elif isinstance(event, Stop):
        stream.stopped = True
        console.stopped(stream, event)


def serve(app):
    """Serve `app` with gevent until SIGTERM or SIGINT, then end every open stream."""
    config = app.config["MEDIASTREAM"]
    server = pywsgi.WSGIServer(
        (config.host, config.port),
        app,
        handler_class=MediaStreamHandler,
        log=None,
    )

    def shut_down():
        server.close()  # accept no more calls
        app.extensions["connections"].end_all()
        server.stop(timeout=1)

    gevent.signal_handler(signal.SIGTERM, shut_down)
    gevent.signal_handler(signal.SIGINT, shut_down)
    server.start()
    console.log.info("listening on %s:%d, WebSocket route /media", config.host, server.server_port)
    server.serve_forever()


if __name__ == "__main__":
    try:
        config = Config.from_environ()
    except ConfigError as problem:
        sys.exit(f"configuration error: {problem}")
    console.configure_logging(config.log_level)
    serve(create_app(config))
