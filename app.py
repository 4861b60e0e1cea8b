"""Consume a real-time Twilio Media Stream over a WebSocket, with Flask.

Twilio's tutorial server, grown up: run `python app.py`, expose port 5000 with
`ngrok http 5000`, point a TwiML <Stream url="wss://<ngrok host>/media"/> at it, call
your number and watch the console. Each call's stream arrives on /media as JSON text
messages: connected, start, media (base64 mu-law audio), dtmf, mark and stop. Each event
goes to the stream's handlers: the console, the recording, speech activity, and yours.
"""

import signal
import sys
import time
from dataclasses import replace

import gevent
from flask import Flask, request
from gevent.event import Event

from mediastream.about import about, health
from mediastream.agent import Agent
from mediastream.agent import busy as agent_busy
from mediastream.browser.live import LiveCalls
from mediastream.browser.pages import browser_pages
from mediastream.config import Config, ConfigError
from mediastream.console import Console, configure_logging, startup
from mediastream.control import CallControl
from mediastream.fleet import FleetEvents
from mediastream.handlers import StreamHandlers, enabled
from mediastream.keywords import Keywords
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
from mediastream.metrics import Metrics, exposition
from mediastream.recording import Recording
from mediastream.security import PageCredentials, signature_check
from mediastream.sentiment import Sentiment
from mediastream.speech import SpeechActivity
from mediastream.stream import NOTHING_MISSING, MediaStream
from mediastream.talkback import Echo, Prompt, Talkback
from mediastream.transcript import Transcript
from mediastream.webhooks import status, twiml
from mediastream.websocket import (
    Connection,
    MediaStreamHandler,
    MediaStreamServer,
    OpenConnections,
    Sockets,
    client_address,
)

# What every stream gets: the console (first, so its summary comes last), its figures in
# the metrics, WAV files when RECORDINGS_DIR is set, who is speaking unless
# SPEECH_ACTIVITY=off; when the TwiML asks for it, the caller's echo (mode=echo), a
# greeting they can talk over (mode=prompt), or a conversation with a model (mode=agent,
# with AGENT set), each as soon as speech activity has seen a chunk, and told first that
# the call ended; what is said when TRANSCRIBE is set (and in it, the KEYWORDS and the
# sentiment), the live calls page (/calls), the fleet's Redis Stream when REDIS_URL is set.
# Add your own handlers after these (see mediastream/handlers.py and docs/handlers.md).
DEFAULT_HANDLERS = (
    Console,
    Metrics,
    Recording,
    SpeechActivity,
    Echo,
    Prompt,
    Agent,
    Transcript,
    Keywords,
    Sentiment,
    LiveCalls,
    FleetEvents,
)


def create_app(config=None, handlers=DEFAULT_HANDLERS, tools=()):
    """The Flask app with its /media WebSocket route (Flask's factory convention).

    `handlers`: Handler classes (or callables taking the Config and returning a Handler),
    each made once per stream to receive its events. `tools`: functions the agent's model
    may call, beside AGENT_TOOLS's (see docs/agent.md)."""
    app = Flask(__name__)
    config = config or Config.from_environ()
    if tools:
        config = replace(config, tools=(*config.tools, *tools))
    app.config["MEDIASTREAM"] = config
    app.extensions["connections"] = connections = OpenConnections()
    # The softphone (/phone) streams in with a page credential where Twilio signs.
    credentials = PageCredentials(config.auth_token) if config.auth_token else None
    sockets = Sockets(app, connections, check=signature_check(config, credentials))
    if config.recordings_dir:
        startup.info("recording every stream's tracks to %s", config.recordings_dir)
    factories = enabled(handlers, config)
    started_at = time.monotonic()

    @sockets.route("/media")
    def media(ws):
        """One Media Stream: read its messages until the connection ends, then end it."""
        stream = MediaStream(client_address(ws.environ))
        stream_handlers = StreamHandlers(stream, factories, config)
        connection = Connection(ws, stream.log, config.max_message_bytes, config.idle_timeout)
        stream.talkback = Talkback(stream, connection.send_text)
        stream.control = CallControl(stream, config, lambda: connection.end("closed by the server"))
        with connection:
            connections.add(connection)
            # A connection that never says which stream it is would only hold a socket open.
            start_deadline = connection.deadline(config.start_timeout, "no start message")
            for message in connection.messages():
                receive(stream, stream_handlers, message)
                if start_deadline is not None and stream.stream_sid:  # started in time
                    start_deadline.cancel()
                    start_deadline = None
                    # Nothing waits on a one-way stream, and an agent's turns take tenths
                    # of a second: read them in batches (an echo is read per message).
                    if not stream.bidirectional or stream.mode == "agent":
                        connection.read_every(config.read_interval)
        stream_handlers.end("stop" if stream.stopped else connection.ended_by)
        connections.discard(connection)

    # Plain HTTP: for people, load balancers, metrics systems and Twilio's webhooks.
    @app.get("/")
    @app.get("/media")  # without a WebSocket handshake: a browser, curl
    def about_this_server():
        return about(request.environ, config)

    @app.get("/healthz")
    def healthz():
        return health(connections, started_at, agent_busy(config))

    @app.get("/metrics")
    def metrics():
        return exposition(request.environ, config)

    @app.post("/status")
    def stream_status():
        return status(request.environ, request.form, config)

    @app.route("/twiml", methods=["GET", "POST"])
    def call_twiml():
        return twiml(request.environ, request.form, config)

    # The operator's pages: every call live (/calls), and a softphone (/phone).
    app.register_blueprint(browser_pages(config, connections, credentials))
    return app


def receive(stream, handlers, message):
    """Decode one message from Twilio, note it in the stream's state, pass it to the handlers."""
    if not isinstance(message, str):
        stream.bad_messages += 1
        handlers.bad_message(f"binary frame of {len(message)} bytes")
        return
    try:
        event = parse_message(message)
        stream.check(event)  # one connection is one stream
    except BadMessage as problem:
        stream.bad_messages += 1
        handlers.bad_message(problem)
        return
    # Twilio numbers every message and each track's chunks: a hole is a lost message.
    lost_messages = stream.check_sequence(event.sequence)
    lost_chunks = stream.add_media(event) if isinstance(event, Media) else NOTHING_MISSING
    if lost_messages or lost_chunks:
        handlers.gap(event, lost_messages, lost_chunks)

    match event:
        case Media():  # 20 ms of one track: event.audio (mu-law), event.pcm (16-bit PCM)
            handlers.media(event)
        case Connected():
            handlers.connected(event)
        case Start():
            stream.start(event)
            handlers.start(event)
        case Dtmf():
            handlers.dtmf(event)
        case Mark():
            event.played = stream.talkback.echoed(event.name)
            handlers.mark(event)
        case Stop():
            stream.stopped = True
            handlers.stop(event)


def serve(app):
    """Serve `app` with gevent. SIGTERM (a deploy) drains: new calls are refused and the open
    ones go on until they end, or until DRAIN_TIMEOUT ends them; SIGINT (Ctrl-C), or SIGTERM
    again, ends every open stream at once. Either way each stream writes its summary."""
    config = app.config["MEDIASTREAM"]
    connections = app.extensions["connections"]
    server = MediaStreamServer(
        (config.host, config.port),
        app,
        handler_class=MediaStreamHandler,
        log=None,
    )
    finished = Event()

    def stop(end_streams):
        # Until the streams have ended, the listener stays open: /healthz says 503 and new
        # calls are refused, so that a load balancer sees the server go.
        end_streams()
        if not finished.is_set():
            server.close()
            server.stop(timeout=1)
            finished.set()

    # (gevent runs each signal's handler in a greenlet of its own: a second SIGTERM ends
    # the streams while the first is still draining.)
    gevent.signal_handler(signal.SIGTERM, stop, lambda: connections.terminate(config.drain_timeout))
    gevent.signal_handler(signal.SIGINT, stop, connections.end_all)
    try:
        server.start()
    except OSError as error:  # the port is taken, or HOST is unknown or not this machine's
        address = (config.host, config.port)
        reason = (error.strerror or str(error)).removesuffix(f": {address}")  # gevent adds it
        sys.exit(f"cannot listen on {config.host}:{config.port}: {reason}")
    startup.info("listening on %s:%d, WebSocket route /media", config.host, server.server_port)
    # Not serve_forever(): it returns as soon as the listener closes, before the streams
    # have ended and written their summaries.
    finished.wait()


def main(handlers=DEFAULT_HANDLERS, tools=()):
    """`python app.py`: settings from the environment, logs to the console, serve."""
    try:
        config = Config.from_environ()
        configure_logging(config.log_level, config.log_format)
        app = create_app(config, handlers, tools)
    except ConfigError as problem:
        sys.exit(f"configuration error: {problem}")
    serve(app)


if __name__ == "__main__":
    main()
