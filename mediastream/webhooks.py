"""Twilio's HTTP requests to this server: the TwiML for a call, and stream status callbacks.

- `/twiml` (POST, as Twilio's "A call comes in" webhook, or GET, to look at it): the
  <Start><Stream> of twiml/start-stream.xml, built with the twilio library's VoiceResponse,
  with the wss:// URL of this very server and a status callback to /status. The call
  then dials DIAL_NUMBER or, without it, hears a short message and stays open a while,
  so that it has something to stream.
- `/status` (POST): <Stream statusCallback> requests, one console line each, tagged like
  the stream's own lines; a stream-error is a WARNING that names Twilio's error, which is
  how you learn why a stream never reached the server.

With TWILIO_AUTH_TOKEN set, both check X-Twilio-Signature as for any Twilio webhook.
"""

import logging

from twilio.twiml.voice_response import Start, VoiceResponse

from mediastream.messages import SID_CHARS, cut
from mediastream.security import https_base, public_base, webhook_refusal
from mediastream.websocket import client_address

log = logging.getLogger("mediastream")

HOLD_SECONDS = 300  # without DIAL_NUMBER, how long the call stays open to be streamed
GREETING = "Your call is streamed to the server. Talk, and watch its console."


def twiml(environ, form, config):
    """/twiml: (body, status, headers)."""
    refusal = _refusal(environ, form, config)
    if refusal:
        return refusal
    response = VoiceResponse()
    start = Start()
    stream = start.stream(
        url=public_base(environ, config.public_url) + "/media",
        track="both_tracks",
        status_callback=https_base(environ, config.public_url) + "/status",
        status_callback_method="POST",
    )
    if form.get("From"):  # Twilio's webhook says who calls; a browser's GET does not
        stream.parameter(name="caller", value=form["From"])
    stream.parameter(name="topic", value="support")
    response.append(start)
    if config.dial_number:
        response.dial(config.dial_number)
    else:
        response.say(GREETING)
        response.pause(length=HOLD_SECONDS)
    log.info(
        '[%s] twiml: call %s gets <Start><Stream url="%s">',
        client_address(environ),
        cut(form.get("CallSid", "") or "(none)", SID_CHARS),
        stream.attrs["url"],
    )
    return str(response), 200, {"Content-Type": "text/xml"}


def status(environ, form, config):
    """/status: (body, status, headers)."""
    refusal = _refusal(environ, form, config)
    if refusal:
        return refusal
    stream_sid = cut(form.get("StreamSid", ""), SID_CHARS)
    event = cut(form.get("StreamEvent", "") or "no StreamEvent", 40)
    tag = stream_sid[-8:] or client_address(environ)
    if event == "stream-error":
        log.warning(
            "[%s] status: stream-error from Twilio: %s", tag, cut(form.get("StreamError", ""), 200)
        )
    else:
        log.info("[%s] status: %s (call %s)", tag, event, cut(form.get("CallSid", ""), SID_CHARS))
    return "", 204, {}


def _refusal(environ, form, config):
    if not config.auth_token:
        return None
    reason = webhook_refusal(environ, form, config.auth_token, config.public_url)
    if not reason:
        return None
    log.warning(
        "[%s] %s refused (403 Forbidden): %s",
        client_address(environ),
        environ.get("PATH_INFO"),
        reason,
    )
    return f"{reason}\n", 403, {"Content-Type": "text/plain"}
