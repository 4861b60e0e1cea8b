"""gunicorn's settings: one worker per core, configured by the same environment variables.

    gunicorn 'app:create_app()'

HOST, PORT and LOG_LEVEL mean what they mean for `python app.py`; WEB_CONCURRENCY
(gunicorn's own variable) overrides the number of workers.
"""

import os
import sys

from mediastream import console
from mediastream.config import Config, ConfigError

# (Names here that match a gunicorn setting, like `config`, are read as that setting.)

try:
    settings = Config.from_environ()
except ConfigError as problem:
    sys.exit(f"configuration error: {problem}")

bind = f"{settings.host}:{settings.port}"
workers = int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1)
worker_class = "mediastream.worker.Worker"
loglevel = settings.log_level.lower()
console.configure_logging(settings.log_level)  # the workers inherit it
