"""`python app.py` with one more handler, for bench/paced.py: how long each media message
took from its scheduled send to a handler seeing it.

The load generator puts, in each call's start, when its first media message is due
(custom parameter `due`, seconds since the epoch: one clock for both processes); chunk n
is due (n - 1) x 20 ms later. At the end of each stream, one line gives the delays in ms.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import DEFAULT_HANDLERS, main  # noqa: E402
from mediastream.g711 import CHUNK_SECONDS  # noqa: E402
from mediastream.handlers import Handler  # noqa: E402


class Delay(Handler):
    may_block = False  # on the reading greenlet: it sees a message when the server does

    def start(self, stream, event):
        if "due" not in event.custom_parameters:  # not the generator's (the echo call)
            self.active = False
            return
        self.due = float(event.custom_parameters["due"])
        self.delays = []

    def media(self, stream, chunk):
        due = self.due + (chunk.chunk - 1) * CHUNK_SECONDS
        self.delays.append(round(1000 * (time.time() - due), 2))

    def end(self, stream, ended_by):
        if self.active:
            stream.log.info("probe: %s", json.dumps(self.delays))


if __name__ == "__main__":
    main(handlers=[*DEFAULT_HANDLERS, Delay])
