"""The Quick start as a new user runs it, with only what requirements.txt installs: `python
app.py`, then gunicorn, each serving a simulated call to its summary.

    .venv/bin/python .ci/quickstart.py      (after: .venv/bin/pip install -r requirements.txt)

No test packages: a module that only the test venv has would fail here, as for a user.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

from mediastream.chat import free_port  # noqa: E402

SERVERS = {
    "python app.py": [sys.executable, "app.py"],
    "gunicorn": [str(BIN / "gunicorn"), "--workers", "2", "app:create_app()"],
}


def serve_one_call(name, command):
    port = free_port()
    environ = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port)}
    with tempfile.TemporaryFile("w+") as console:
        server = subprocess.Popen(command, cwd=REPO, env=environ, stdout=console, stderr=console)
        try:
            deadline = time.monotonic() + 30
            while not re.search(r"listening on|Listening at", _read(console)):
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"{name}: did not start:\n{_read(console)}")
                time.sleep(0.1)
            time.sleep(1)  # gunicorn's workers load the app after the arbiter listens
            simulated = subprocess.run(
                [sys.executable, "simulate.py", "--url", f"ws://127.0.0.1:{port}/media",
                 "--seconds", "1", "--tracks", "both"],
                cwd=REPO, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        finally:
            server.send_signal(signal.SIGTERM)
            status = server.wait(30)
        log = _read(console)
    if simulated.returncode or "summary:" not in log or "Traceback" in log or status:
        sys.exit(f"{name}: the call failed (exit {status}):\n{simulated.stdout}{log}")
    print(f"{name}: {simulated.stdout.strip()}")


def _read(console):
    console.seek(0)
    return console.read()


if __name__ == "__main__":
    for name, command in SERVERS.items():
        serve_one_call(name, command)
