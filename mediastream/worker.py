"""gunicorn's worker for this server: every core, with gevent-websocket's worker class.

    gunicorn 'app:create_app()'        (settings in gunicorn.conf.py)

gevent-websocket's GeventWebSocketWorker, with two changes: it serves with our
MediaStreamHandler (so handshakes are refused before they are accepted, as under
`python app.py`), and SIGTERM ends every open stream at once, with its summary.
(gunicorn's own gevent worker would wait for the streams to end by themselves until
its graceful timeout, and be killed by the arbiter before logging anything.)
"""

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker

from mediastream.websocket import MediaStreamHandler, MediaStreamServer


class Worker(GeventWebSocketWorker):
    server_class = MediaStreamServer
    wsgi_handler = MediaStreamHandler

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        app = getattr(self, "wsgi", None)  # None while the worker is still loading the app
        if app is not None:
            gevent.spawn(app.extensions["connections"].end_all)
