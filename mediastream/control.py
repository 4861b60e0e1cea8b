"""Call control: end a stream's call, transfer it, or redirect it to any TwiML, through
Twilio's REST API (`POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`, with
`Status=completed` to hang up, `Twiml=...` to redirect). Any handler may use it:

    class Retention(Handler):
        def utterance(self, stream, utterance):
            if "cancel" in utterance.keywords:
                stream.control.transfer("+15550100")

It works on one-way `<Start><Stream>` calls and on `<Connect><Stream>` ones alike: it
acts on the call, not on the stream. It needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN;
TWILIO_API_URL (default Twilio's own) serves a regional edge, a proxy or a test stand-in.
Each method waits for Twilio's answer (up to TIMEOUT): call it from a handler that may
block (the default for yours) or a greenlet, never from one with `may_block = False`.
A failure (401, 404 for a call already over, 5xx, refused, timeout) is one WARNING
line, and the method returns False; the call goes on.
"""

import base64
from urllib.parse import quote, urlencode
from xml.sax.saxutils import escape

from mediastream.apiclient import ServiceFailed, request

TIMEOUT = 10.0  # seconds Twilio's API may take to answer


class CallControl:
    """`stream.control`: what a handler may do to the stream's call."""

    def __init__(self, stream, config, close_stream):
        self.stream = stream
        self.config = config
        self._close_stream = close_stream  # ends the WebSocket with a normal close

    @property
    def can_use_rest(self):
        """Whether Twilio's REST API can be used: the account SID and auth token are set."""
        return bool(self.config.twilio_account_sid and self.config.auth_token)

    def hang_up(self):
        """End the call. Without REST credentials, close the stream instead: on
        `<Connect><Stream>` with nothing after it in the TwiML, Twilio then ends the call
        (a one-way stream's call goes on)."""
        if not self.can_use_rest:
            self.stream.log.info(
                "call: no TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN: closing the stream "
                "(on <Connect><Stream>, Twilio goes on to the TwiML's next verb, or ends the call)"
            )
            self.close()
            return True
        return self._update("hang up", {"Status": "completed"})

    def transfer(self, to):
        """Redirect the call to `<Dial>` a number (+E.164) or a `sip:` URI."""
        target = f"<Sip>{escape(to)}</Sip>" if to.startswith("sip:") else escape(to)
        return self.redirect(f"<Response><Dial>{target}</Dial></Response>", f"transfer to {to}")

    def redirect(self, twiml, what="redirect"):
        """Give the call new TwiML (a whole `<Response>` document): the stream ends, and
        the call goes on with it."""
        return self._update(what, {"Twiml": twiml})

    def close(self):
        """Close the stream's WebSocket (a normal close, 1000)."""
        self._close_stream()

    def _update(self, what, fields):
        if not self.can_use_rest:
            self.stream.log.warning(
                "call: cannot %s: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN", what
            )
            return False
        sid = self.config.twilio_account_sid
        url = (
            f"{self.config.twilio_api_url}/2010-04-01/Accounts/{sid}/Calls/"
            f"{quote(self.stream.call_sid or '', safe='')}.json"
        )
        secret = base64.b64encode(f"{sid}:{self.config.auth_token}".encode()).decode()
        body = urlencode(fields).encode()
        try:
            with request(
                "POST",
                url,
                body,
                "application/x-www-form-urlencoded",
                timeout=TIMEOUT,
                authorization=f"Basic {secret}",
            ) as answer:
                answer.read()
        except ServiceFailed as failure:
            self.stream.log.warning("call: could not %s: Twilio's API: %s", what, failure)
            return False
        self.stream.log.info("call: %s (Twilio's API said yes)", what)
        return True
