// The softphone's microphone, as a call carries it: 8000 Hz, 16-bit, 160 samples (20 ms) a
// frame. Runs in the audio thread; each input sample lands in the output sample whose
// span it falls in, and each output sample is the average of its span (a simple
// anti-aliasing filter before the rate drops to 8000 Hz).
"use strict";

const CALL_RATE = 8000;
const FRAME_SAMPLES = 160;

class CallCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / CALL_RATE; // input samples per output sample (6 at 48 kHz)
    this.edge = this.step; // where the output sample being summed ends
    this.position = 0;
    this.sum = 0;
    this.count = 0;
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      this.sum += channel[i];
      this.count += 1;
      this.position += 1;
      if (this.position < this.edge) continue;
      this.edge += this.step;
      if (this.position >= 1e6) {
        this.position -= 1e6; // keep the numbers small over a long call
        this.edge -= 1e6;
      }
      const sample = Math.round((this.sum / this.count) * 32767);
      this.frame[this.filled++] = Math.max(-32768, Math.min(32767, sample));
      this.sum = 0;
      this.count = 0;
      if (this.filled === FRAME_SAMPLES) {
        this.port.postMessage(this.frame, [this.frame.buffer]);
        this.frame = new Int16Array(FRAME_SAMPLES);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("call-capture", CallCapture);
