// The live panels of /calls (every call) and /phone (its own call), fed by the server's
// Server-Sent Events at /calls/events: `snapshot` (every call, on (re)connecting), `calls`
// (another gunicorn worker's, to add), `call` (one starts, here or, in a fleet, on another
// server), `update` (figures that changed, at most 4 times a second), `utterance` (a
// transcript line) and `end` (the call's summary). Everything from the server is put
// in the page as text, never as HTML.
"use strict";

const Live = (() => {
  const ENDED_KEPT = 10; // as the server's live.py
  const clock = (seconds) => {
    const minutes = Math.floor(seconds / 60);
    const rest = (seconds - 60 * minutes).toFixed(1).padStart(4, "0");
    return `${String(minutes).padStart(2, "0")}:${rest}`;
  };

  const element = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  const problems = (figures) =>
    (figures.keys ? `keys ${figures.keys} · ` : "") +
    `audio lost ${figures.lost_chunks * 20} ms · bad messages ${figures.bad_messages}`;

  const mood = (score) => (score >= 0.05 ? "positive" : score <= -0.05 ? "negative" : "neutral");

  // The line's text, with its keywords marked (whole words, any case, as the server finds them).
  function marked(text, keywords) {
    const span = element("span", "text");
    if (!keywords.length) {
      span.textContent = text;
      return span;
    }
    const escaped = keywords.map((k) => k.replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(/[\s-]+/g, "[\\s-]+"));
    const pattern = new RegExp(`\\b(${escaped.join("|")})\\b`, "gi");
    let last = 0;
    for (const match of text.matchAll(pattern)) {
      span.append(text.slice(last, match.index), element("mark", "", match[0]));
      last = match.index + match[0].length;
    }
    span.append(text.slice(last));
    return span;
  }

  class Panel {
    constructor(call) {
      this.id = call.id;
      this.node = element("article", "call");
      this.node.dataset.streamSid = call.id;
      const title = element("div", "title");
      const parameters = call.parameters || {};
      title.append(
        element("span", "tag", `[${call.tag}]`),
        element("span", "caller", parameters.caller || parameters.From || "unknown caller"),
      );
      if (call.mode) title.append(element("span", "mode", call.mode));
      if (call.server) title.append(element("span", "server", call.server)); // in a fleet
      this.duration = element("span", "duration");
      title.append(this.duration);
      const others = Object.entries(parameters).filter(([name]) => name !== "caller");
      const meta = [`call ${call.call_sid || "—"}`, `from ${call.client}`];
      if (others.length) meta.push(others.map(([k, v]) => `${k}=${v}`).join(", "));
      this.tracks = element("div", "tracks");
      this.trackRows = {};
      this.problems = element("div", "problems");
      this.transcript = element("ol", "transcript");
      this.summary = element("div", "summary");
      this.node.append(title, element("div", "meta", meta.join(" · ")), this.tracks, this.problems, this.transcript, this.summary);
      this.opened = call.opened;
      this.skew = Date.now() / 1000 - call.opened - call.duration; // the server's clock vs ours
      for (const name of call.declared_tracks || []) this.row(name);
      this.update(call);
      for (const line of call.lines || []) this.say(line);
      if (call.summary) this.end(call);
    }

    row(name) {
      if (!this.trackRows[name]) {
        const row = element("div", `track ${name}`);
        row.dataset.track = name;
        row.dataset.speaking = "false";
        const meter = element("span", "meter");
        const fill = element("span");
        meter.append(fill);
        const talk = element("span", "talk", "—");
        row.append(element("span", "dot"), element("span", "name", name), meter, talk);
        this.tracks.append(row);
        this.trackRows[name] = { row, fill, talk };
      }
      return this.trackRows[name];
    }

    update(figures) {
      for (const [name, track] of Object.entries(figures.tracks || {})) {
        const { row, fill, talk } = this.row(name);
        row.dataset.speaking = String(track.speaking);
        fill.style.transform = `scaleX(${track.level})`;
        talk.textContent = track.talk === null ? `${track.seconds.toFixed(1)} s` : `talk ${track.talk.toFixed(1)} s`;
      }
      this.problems.className = figures.lost_chunks || figures.bad_messages ? "problems some" : "problems";
      this.problems.textContent = problems(figures);
      this.tick();
    }

    tick() {
      if (!this.ended) this.duration.textContent = clock(Date.now() / 1000 - this.skew - this.opened);
    }

    // A transcript line, or the agent's (track "agent": an answer as the caller heard it,
    // "cut" where they talked over it, with its turn's voice to voice; a tool; a transfer).
    say(line) {
      const item = element("li", line.kind ? `${line.track} ${line.kind}` : line.track);
      item.append(element("time", "", clock(line.start)), marked(line.text, line.keywords));
      if (line.sentiment !== null && line.sentiment !== undefined) {
        const score = `${line.sentiment > 0 ? "+" : ""}${line.sentiment.toFixed(2)}`;
        item.append(element("span", `sentiment ${mood(line.sentiment)}`, score));
      }
      if (line.kind === "cut") item.append(element("span", "tag cut", "cut off"));
      if (line.voice_to_voice) item.append(element("span", "tag", `${line.voice_to_voice.toFixed(2)} s`));
      const atBottom = this.transcript.scrollTop + this.transcript.clientHeight >= this.transcript.scrollHeight - 4;
      this.transcript.append(item);
      if (atBottom) this.transcript.scrollTop = this.transcript.scrollHeight;
    }

    end(call) {
      const summary = call.summary;
      this.ended = true;
      this.node.classList.add("ended");
      this.duration.textContent = clock(summary.duration);
      for (const name of Object.keys(this.trackRows)) this.trackRows[name].row.dataset.speaking = "false";
      const lines = [`ended by ${summary.ended_by} after ${summary.duration.toFixed(1)} s`];
      for (const [name, track] of Object.entries(summary.tracks)) {
        let text = `${name}: ${track.seconds.toFixed(1)} s of audio`;
        if (track.talk !== null) text += `, talk ${track.talk.toFixed(1)} s`;
        if (track.utterances) text += `, ${track.utterances} utterance${track.utterances === 1 ? "" : "s"}`;
        if (track.sentiment !== null) text += `, sentiment ${track.sentiment > 0 ? "+" : ""}${track.sentiment.toFixed(2)} (${mood(track.sentiment)})`;
        lines.push(text);
      }
      const keywords = Object.entries(summary.keywords);
      if (keywords.length) lines.push(`keywords: ${keywords.map(([k, n]) => `"${k}" ${n}`).join(", ")}`);
      lines.push(problems(summary));
      for (const [name, problem] of Object.entries(summary.problems)) lines.push(`handler ${name} ${problem}`);
      this.summary.replaceChildren(...lines.map((text) => element("p", "", text)));
    }
  }

  // Follow the server's calls in `open` and `ended` (containers), or only one stream's.
  function follow({ open, ended, stream, status, onChange }) {
    const panels = new Map();
    const url = stream ? `/calls/events?stream=${encodeURIComponent(stream)}` : "/calls/events";
    const source = new EventSource(url);
    const changed = () => onChange && onChange(panels);
    const place = (panel) => (panel.ended && ended ? ended : open).prepend(panel.node);
    const add = (call) => {
      const panel = new Panel(call);
      panels.get(call.id)?.node.remove();
      panels.set(call.id, panel);
      place(panel);
    };
    const on = (name, handle) =>
      source.addEventListener(name, (message) => {
        handle(JSON.parse(message.data));
        changed();
      });
    on("snapshot", (body) => {
      for (const panel of panels.values()) panel.node.remove();
      panels.clear();
      for (const call of body.calls.slice().reverse()) add(call);
    });
    on("calls", (body) => body.calls.slice().reverse().forEach(add)); // another worker's
    on("call", add);
    on("update", (body) => body.calls.forEach((figures) => panels.get(figures.id)?.update(figures)));
    on("utterance", (body) => panels.get(body.id)?.say(body.line));
    on("end", (call) => {
      const panel = panels.get(call.id);
      if (panel) {
        panel.update(call);
        panel.end(call);
        place(panel);
      } else {
        add(call);
      }
      // Keep as many ended calls as the server does (a page may stay open for days).
      const endedPanels = [...panels.values()].filter((each) => each.ended);
      for (const old of endedPanels.slice(0, -ENDED_KEPT)) {
        old.node.remove();
        panels.delete(old.id);
      }
    });
    if (status) {
      source.onopen = () => (status.textContent = "live");
      source.onerror = () => (status.textContent = "reconnecting…");
    }
    setInterval(() => panels.forEach((panel) => panel.tick()), 100);
    return { close: () => source.close(), panels };
  }

  return { follow };
})();
