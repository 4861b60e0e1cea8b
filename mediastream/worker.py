"""gunicorn's worker for this server: every core, with gevent-websocket's worker class.

    gunicorn 'app:create_app()'        (settings in gunicorn.conf.py)

gevent-websocket's GeventWebSocketWorker, with these changes: it serves with our
MediaStreamServer and MediaStreamHandler (so handshakes are refused before they are
accepted, as under `python app.py`), and SIGTERM, SIGINT (Ctrl-C) and SIGQUIT end every
open stream at once, with its summary.
(gunicorn's own gevent worker would wait for the streams to end by themselves until
its graceful timeout, and be killed by the arbiter before logging anything.)
"""

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker

from mediastream.websocket import MediaStreamHandler, MediaStreamServer


class Worker(GeventWebSocketWorker):
    server_class = MediaStreamServer
    wsgi_handler = MediaStreamHandler

    def handle_quit(self, sig, frame):
        # Ctrl-C in a terminal (SIGINT to every process of the group) and the arbiter's
        # SIGQUIT: gunicorn would sys.exit() at once (two SystemExit tracebacks, no
        # summaries); end the streams as SIGTERM does instead.
        self.handle_exit(sig, frame)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        app = getattr(self, "wsgi", None)  # None while the worker is still loading the app
        if app is not None:
            gevent.spawn(app.extensions["connections"].end_all)
