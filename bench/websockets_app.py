"""The peer to beat: a minimal Media Streams consumer on the websockets library (asyncio).

Per message it does what a minimal consumer must: json.loads, base64-decode media
payloads, count media per track; a line at start and at the end of each stream.
"""

import asyncio
import base64
import json
import logging
import os

from websockets.asyncio.server import serve

log = logging.getLogger("websockets-consumer")


async def media(websocket):
    stream_sid, counts = None, {}
    async for message in websocket:
        event = json.loads(message)
        kind = event["event"]
        if kind == "media":
            track = event["media"]["track"]
            audio = base64.b64decode(event["media"]["payload"])
            counts[track] = counts.get(track, 0) + len(audio)
        elif kind == "start":
            stream_sid = event["start"]["streamSid"]
            log.info("start %s", stream_sid)
        elif kind == "stop":
            break
    log.info("summary %s %s", stream_sid, counts)


async def main():
    port = int(os.environ.get("PORT", "5000"))
    async with serve(media, "127.0.0.1", port, max_size=64 * 1024, compression=None):
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
