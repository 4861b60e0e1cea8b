"""gunicorn's settings: one worker per core, configured by the same environment variables.

    gunicorn 'app:create_app()'

HOST, PORT, LOG_LEVEL, LOG_FORMAT, DRAIN_TIMEOUT and the rest mean what they mean for
`python app.py`; WEB_CONCURRENCY (gunicorn's own variable) overrides the number of workers.
PROMETHEUS_MULTIPROC_DIR, if set, is where the workers keep their metrics (emptied at
start) and, without REDIS_URL, the sockets through which each worker's /calls page shows
the others' calls (with it, they meet through Redis); otherwise a temporary directory is
made, and removed at exit.
"""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# /metrics adds up every worker's figures from files in this directory (prometheus_client's
# multiprocess mode). It must exist before gunicorn loads the worker class, whose imports
# already write to it; a temporary one is removed when gunicorn exits, however it exits
# (even when it cannot start), by the process that made it: workers run atexit too.
OWN_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mediastream-metrics-")
METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
ARBITER = os.getpid()


@atexit.register
def remove_own_metrics_dir():
    if OWN_METRICS_DIR and os.getpid() == ARBITER:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)


from mediastream import console  # noqa: E402
from mediastream.browser.events import PEER_SOCKETS, share_calls  # noqa: E402
from mediastream.config import Config, ConfigError  # noqa: E402

# (Names here that match a gunicorn setting, like `config`, are read as that setting.)

try:
    settings = Config.from_environ()
except ConfigError as problem:
    sys.exit(f"configuration error: {problem}")

bind = f"{settings.host}:{settings.port}"
workers = int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1)
worker_class = "mediastream.worker.Worker"
# On SIGTERM each worker drains for up to DRAIN_TIMEOUT, then ends what is left and writes
# the summaries; the arbiter kills a worker still there after graceful_timeout.
graceful_timeout = round(settings.drain_timeout) + 30
loglevel = settings.log_level.lower()
console.configure_logging(settings.log_level, settings.log_format)  # the workers inherit it


def on_starting(server):
    """Start the metrics from zero: a previous run's files would be added in (and a previous
    run's sockets for the calls page would be followed)."""
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    for old in [*METRICS_DIR.glob("*.db"), *METRICS_DIR.glob(PEER_SOCKETS)]:
        old.unlink()


def post_worker_init(worker):
    """Every worker's calls on each worker's /calls page: through the run's directory, or,
    in a fleet (REDIS_URL), through Redis, like every other server's."""
    if not settings.redis_url:
        share_calls(worker.wsgi, METRICS_DIR)


def child_exit(server, worker):
    """A worker that is gone no longer counts in the open streams."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
