// The softphone: the microphone streamed to /media in Twilio's own messages, as a call
// would be. `connected`, `start` (with the page's custom parameters: caller, and mode for
// talk back), a `media` message per 20 ms of 8000 Hz mu-law, a `dtmf` message per key
// pressed on the keypad (or typed), `stop` on hang up. What the
// server sends back (talk back) is played in order and in real time; each mark is echoed
// when the audio before it has played, and `clear` drops what is queued and echoes every
// pending mark at once, as Twilio does.
"use strict";

const CALL_RATE = 8000;
const CHUNK_SECONDS = 0.02;

// G.711 mu-law, as the server's g711.py: 16-bit samples <-> one byte each.
function muLawByte(sample) {
  const sign = sample < 0 ? 0x80 : 0;
  let magnitude = Math.min(Math.abs(sample), 32635) + 0x84;
  let exponent = 7;
  for (let mask = 0x4000; (magnitude & mask) === 0 && exponent > 0; mask >>= 1) exponent--;
  const mantissa = (magnitude >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

const MU_LAW_SAMPLES = Float32Array.from({ length: 256 }, (_, byte) => {
  const code = ~byte & 0xff;
  const magnitude = ((((code & 0x0f) << 3) + 0x84) << ((code >> 4) & 0x07)) - 0x84;
  return (code & 0x80 ? -magnitude : magnitude) / 32768;
});

const toBase64 = (bytes) => btoa(String.fromCharCode(...bytes));
const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
const sid = (prefix) => prefix + Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");

class Softphone {
  constructor(page) {
    this.page = page;
    this.socket = null;
  }

  async call({ caller, mode }) {
    this.streamSid = sid("MZ");
    this.callSid = sid("CA");
    this.accountSid = sid("AC");
    this.sequence = 0;
    this.chunks = 0;
    this.heard = 0;
    this.marksPlayed = 0;
    this.clears = 0;
    this.keys = "";
    this.pendingMarks = []; // {name, at}: echoed when the audio clock passes `at`
    this.playing = []; // the sources scheduled and not yet played out
    this.page.state("Asking for the microphone…", "dialing");
    if (!window.isSecureContext || !navigator.mediaDevices) {
      throw new Error("the microphone is unavailable: a browser gives it only to https:// pages and localhost (open this page through ngrok's https:// URL)");
    }
    const microphone = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
    this.microphone = microphone;
    const audio = (this.audio = new AudioContext());
    await audio.resume(); // a context made after an await may start suspended (autoplay rules)
    await audio.audioWorklet.addModule("/browser/capture-worklet.js");
    this.capture = new AudioWorkletNode(audio, "call-capture");
    const silent = audio.createGain(); // the worklet must reach the output to be run
    silent.gain.value = 0;
    audio.createMediaStreamSource(microphone).connect(this.capture).connect(silent).connect(audio.destination);
    this.playhead = 0;

    const { credential } = await (await fetch("/phone/credential", { method: "POST" })).json();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = credential ? `?credential=${encodeURIComponent(credential)}` : "";
    this.page.state("Connecting…", "dialing");
    const socket = (this.socket = new WebSocket(`${scheme}//${location.host}/media${query}`));
    socket.onopen = () => this.opened({ caller, mode });
    socket.onmessage = (message) => this.received(JSON.parse(message.data));
    socket.onclose = (event) => this.closed(event);
    this.markTimer = setInterval(() => this.echoPlayedMarks(), 10);
  }

  send(message) {
    this.sequence += 1;
    this.socket.send(JSON.stringify({ ...message, sequenceNumber: String(this.sequence) }));
  }

  opened({ caller, mode }) {
    const customParameters = { caller };
    if (mode) customParameters.mode = mode;
    this.send({ event: "connected", protocol: "Call", version: "1.0.0" });
    this.send({
      event: "start",
      streamSid: this.streamSid,
      start: {
        streamSid: this.streamSid,
        accountSid: this.accountSid,
        callSid: this.callSid,
        tracks: ["inbound"],
        customParameters,
        mediaFormat: { encoding: "audio/x-mulaw", sampleRate: CALL_RATE, channels: 1 },
      },
    });
    this.capture.port.onmessage = (frame) => this.speak(frame.data);
    this.page.connected(this.streamSid);
  }

  speak(frame) {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    this.chunks += 1;
    this.send({
      event: "media",
      streamSid: this.streamSid,
      media: {
        track: "inbound",
        chunk: String(this.chunks),
        timestamp: String(Math.round(this.chunks * CHUNK_SECONDS * 1000)),
        payload: toBase64(Array.from(frame, muLawByte)),
      },
    });
    this.page.figures(this);
  }

  press(digit) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return;
    this.send({ event: "dtmf", streamSid: this.streamSid, dtmf: { track: "inbound_track", digit } });
    this.keys += digit;
    this.page.figures(this);
  }

  received(message) {
    if (message.event === "media") this.play(fromBase64(message.media.payload));
    else if (message.event === "mark") this.pendingMarks.push({ name: message.mark.name, at: this.playhead });
    else if (message.event === "clear") this.clear();
  }

  play(audio) {
    const buffer = this.audio.createBuffer(1, audio.length, CALL_RATE);
    buffer.getChannelData(0).set(Array.from(audio, (byte) => MU_LAW_SAMPLES[byte]));
    const source = this.audio.createBufferSource();
    source.buffer = buffer;
    source.connect(this.audio.destination);
    // In order, without gaps, and not before now: a queue like Twilio's.
    this.playhead = Math.max(this.playhead, this.audio.currentTime + 0.05);
    source.start(this.playhead);
    this.playhead += buffer.duration;
    this.playing.push(source);
    source.onended = () => this.playing.splice(this.playing.indexOf(source), 1);
    this.heard += buffer.duration;
    this.page.figures(this);
  }

  echoPlayedMarks() {
    while (this.pendingMarks.length && this.pendingMarks[0].at <= this.audio.currentTime) {
      this.echoMark(this.pendingMarks.shift().name);
    }
  }

  echoMark(name) {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    this.send({ event: "mark", streamSid: this.streamSid, mark: { name } });
    this.marksPlayed += 1;
    this.page.figures(this);
  }

  clear() {
    for (const source of this.playing.splice(0)) source.stop();
    this.playhead = this.audio.currentTime;
    this.clears += 1;
    for (const mark of this.pendingMarks.splice(0)) this.echoMark(mark.name);
  }

  hangUp() {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.send({ event: "stop", streamSid: this.streamSid, stop: { accountSid: this.accountSid, callSid: this.callSid } });
      this.socket.close(1000, "hung up");
    }
    this.release();
  }

  closed(event) {
    const why = event.code === 1000 || event.code === 1005 ? "" : ` (the server closed it: ${event.code} ${event.reason || ""})`;
    this.release();
    this.page.ended(`Call ended${why}`);
  }

  release() {
    clearInterval(this.markTimer);
    this.microphone?.getTracks().forEach((track) => track.stop());
    this.audio?.close();
    this.microphone = this.audio = null;
  }
}

// The page: its form, its figures, and its own call's live panel.
const page = {
  node: (id) => document.getElementById(id),
  state(text, state) {
    this.node("state").textContent = text;
    document.body.dataset.state = state;
  },
  connected(streamSid) {
    this.state(`On the call [${streamSid.slice(-8)}]`, "connected"); // the console's tag
    document.body.dataset.streamSid = streamSid;
    this.node("call").disabled = true;
    this.node("hangup").disabled = false;
    this.panel?.close();
    this.node("own-call").replaceChildren();
    this.panel = Live.follow({ open: this.node("own-call"), stream: streamSid, status: this.node("status") });
  },
  figures(phone) {
    this.node("sent").textContent = `${(phone.chunks * CHUNK_SECONDS).toFixed(1)} s`;
    this.node("heard").textContent = `${phone.heard.toFixed(1)} s`;
    this.node("marks").textContent = phone.marksPlayed;
    this.node("clears").textContent = phone.clears;
    this.node("keys").textContent = phone.keys || "—";
  },
  ended(text) {
    this.state(text, "ended");
    this.node("call").disabled = false;
    this.node("hangup").disabled = true;
  },
};

const phone = new Softphone(page);
page.state("Ready", "ready");
page.node("dialer").addEventListener("submit", (event) => {
  event.preventDefault();
  page.node("call").disabled = true;
  const settings = { caller: page.node("caller").value.trim() || "Browser caller", mode: page.node("mode").value };
  phone.call(settings).catch((problem) => {
    phone.release();
    page.ended(`Could not call: ${problem.message || problem}`);
  });
});
page.node("hangup").addEventListener("click", () => phone.hangUp());
page.node("keypad").addEventListener("click", (event) => {
  if (event.target.tagName === "BUTTON") phone.press(event.target.textContent);
});
document.addEventListener("keydown", (event) => {
  if (/^[0-9*#]$/.test(event.key) && event.target.tagName !== "INPUT") phone.press(event.key);
});
