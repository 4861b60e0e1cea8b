// The peer from Node: a minimal Media Streams consumer on the `ws` library. Per message
// it does what a minimal consumer must: JSON.parse, base64-decode media payloads, count
// media per track; a line at start and at the end of each stream.
const { WebSocketServer } = require("ws");

const port = Number(process.env.PORT || 5000);
const server = new WebSocketServer({
  host: "127.0.0.1",
  port,
  path: "/media",
  maxPayload: 64 * 1024,
  perMessageDeflate: false,
});

server.on("connection", (socket) => {
  let streamSid = null;
  const counts = {};
  socket.on("message", (data) => {
    const event = JSON.parse(data);
    if (event.event === "media") {
      const audio = Buffer.from(event.media.payload, "base64");
      counts[event.media.track] = (counts[event.media.track] || 0) + audio.length;
    } else if (event.event === "start") {
      streamSid = event.start.streamSid;
      console.log("start", streamSid);
    } else if (event.event === "stop") {
      socket.close();
    }
  });
  socket.on("close", () => console.log("summary", streamSid, JSON.stringify(counts)));
});
server.on("listening", () => console.log(`listening on 127.0.0.1:${port}`));
