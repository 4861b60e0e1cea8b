"""gunicorn's worker for this server: every core, with gevent-websocket's worker class.

    gunicorn 'app:create_app()'        (settings in gunicorn.conf.py)

gevent-websocket's GeventWebSocketWorker, with these changes: it serves with our
MediaStreamServer and MediaStreamHandler (so handshakes are refused before they are
accepted, as under `python app.py`); SIGTERM drains: the worker takes no new calls and its
open streams go on until they end, or until DRAIN_TIMEOUT ends them; SIGTERM again, SIGINT
(Ctrl-C) and SIGQUIT end every open stream at once. Each stream writes its summary.
"""

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker

from mediastream.websocket import MediaStreamHandler, MediaStreamServer


class Worker(GeventWebSocketWorker):
    wsgi_handler = MediaStreamHandler

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.servers = []

    def server_class(self, *args, **kwargs):
        """Where gunicorn makes its server for each listener: ours, kept for handle_exit."""
        self.servers.append(MediaStreamServer(*args, **kwargs))
        return self.servers[-1]

    def handle_exit(self, sig, frame):
        # SIGTERM comes from the arbiter when gunicorn stops, and when a reload (HUP) has
        # started new workers. Close this worker's listener now, so that new calls go to
        # the other workers (gunicorn would close it only at its next second's check, and
        # a call accepted meanwhile would be refused); gunicorn then waits up to its
        # graceful_timeout for the open streams to end.
        for server in self.servers:
            server.close()
        super().handle_exit(sig, frame)
        connections = self._connections()
        if connections is not None:
            gevent.spawn(connections.terminate, self.wsgi.config["MEDIASTREAM"].drain_timeout)

    def handle_quit(self, sig, frame):
        # Ctrl-C in a terminal (SIGINT to every process of the group) and the arbiter's
        # SIGQUIT: gunicorn would sys.exit() at once (two SystemExit tracebacks, no
        # summaries); end the streams now, each with its summary, instead.
        super().handle_exit(sig, frame)
        connections = self._connections()
        if connections is not None:
            gevent.spawn(connections.end_all)

    def _connections(self):
        app = getattr(self, "wsgi", None)  # None while the worker is still loading the app
        return None if app is None else app.extensions["connections"]
