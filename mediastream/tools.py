"""The agent's tools: plain Python functions, offered to the model as function tools in
OpenAI's chat completions API (no I/O here: the agent runs them).

    def order_status(order_id: str) -> str:
        \"\"\"Where an order is: its status and delivery date.\"\"\"
        ...

Each tool's name is the function's; its description, the docstring; its parameters, a
JSON Schema from the type hints: `str`, `int`, `float`, `bool`, `Literal[...]` (an enum),
`list[...]` of those; a parameter with a default, or `X | None`, is not required. A
parameter annotated `Call` is not the model's: it gets the call the tool serves (its
SIDs, the TwiML's parameters such as the caller's number).

AGENT_TOOLS=module names a module importable from where the server starts; its tools are
the functions in its `__all__`, or without one, the public functions defined in it.
`create_app(tools=[...])` and `main(tools=[...])` take functions too.
"""

import importlib
import inspect
import os
import sys
import types
import typing
from dataclasses import dataclass, field

import orjson

from mediastream.config import ConfigError

RESULT_CHARACTERS = 2000  # of a tool's result, in the model's next request


@dataclass(frozen=True)
class Call:
    """What a tool may learn of the call it serves: give it a parameter annotated `Call`."""

    call_sid: str | None
    stream_sid: str | None
    tag: str  # the console's name for the stream
    parameters: dict = field(default_factory=dict)  # the TwiML's <Parameter>s (From, To, ...)


class BadArguments(ValueError):
    """The model's arguments do not fit the tool: the message says how, for the model."""


_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True, eq=False)
class Tool:
    """One tool: a function of yours (`function`), or one of the agent's own (None)."""

    name: str
    description: str
    parameters: dict  # a JSON Schema of an object
    function: object = None
    call_parameter: str | None = None  # the parameter that gets the Call, if any
    nullable: tuple = ()  # `X | None` parameters: None when the model leaves them out

    def schema(self):
        """The tool as the chat completions API takes it in `tools`."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def arguments(self, text):
        """The model's arguments (JSON text) as keyword arguments, or BadArguments."""
        try:
            given = orjson.loads(text or "{}")
        except ValueError:
            raise BadArguments(f"the arguments are not JSON: {text[:80]!r}") from None
        if not isinstance(given, dict):
            raise BadArguments("the arguments must be a JSON object")
        properties = self.parameters["properties"]
        unknown = sorted(set(given) - set(properties))
        if unknown:
            raise BadArguments(f"no such parameter: {', '.join(unknown)}")
        missing = [name for name in self.parameters.get("required", []) if name not in given]
        if missing:
            raise BadArguments(f"missing: {', '.join(missing)}")
        arguments = dict.fromkeys(self.nullable)
        for name, value in given.items():
            if value is None and name not in self.parameters.get("required", []):
                continue  # null for one it may leave out: as if it had
            arguments[name] = _checked(name, value, properties[name])
        return arguments

    def run(self, arguments, call):
        """The function's result for `arguments`, as the text of a `tool` message."""
        if self.call_parameter:
            arguments = {**arguments, self.call_parameter: call}
        return result_text(self.function(**arguments))


def _checked(name, value, schema):
    """`value` if it fits `schema` (as the model may send it: 2.0 for an integer), else
    BadArguments."""
    kind = schema["type"]
    if kind == "array":
        if not isinstance(value, list):
            raise BadArguments(f"{name} must be a list")
        return [_checked(f"{name}[{n}]", item, schema["items"]) for n, item in enumerate(value)]
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        value = int(value)
    fits = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
    }[kind]
    if not fits:
        article = "an" if kind == "integer" else "a"
        raise BadArguments(f"{name} must be {article} {kind}, not {orjson.dumps(value).decode()}")
    if "enum" in schema and value not in schema["enum"]:
        raise BadArguments(f"{name} must be one of {', '.join(map(str, schema['enum']))}")
    return float(value) if kind == "number" else value


def result_text(result):
    """A tool's result as a `tool` message's content: text as it is, anything else as
    JSON (or its str() when JSON cannot carry it), cut short."""
    if not isinstance(result, str):
        try:
            result = orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:
            result = str(result)
    return result[:RESULT_CHARACTERS]


def tool_from(function):
    """The Tool of a function, or ConfigError saying what in it cannot be a tool."""
    name = getattr(function, "__name__", repr(function))
    description = inspect.getdoc(function)
    if not description:
        raise ConfigError(f"tool {name}() has no docstring: the model needs it to know the tool")
    try:
        hints = typing.get_type_hints(function)
    except Exception as error:  # a hint naming what is not there
        raise ConfigError(f"tool {name}(): its type hints cannot be read ({error})") from None
    properties, required, nullable, call_parameter = {}, [], [], None
    for parameter in inspect.signature(function).parameters.values():
        hint = hints.get(parameter.name)
        if hint is Call:
            call_parameter = parameter.name
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ConfigError(f"tool {name}(): *{parameter.name} cannot be a JSON Schema")
        if hint is None:
            raise ConfigError(f"tool {name}(): parameter {parameter.name} has no type hint")
        schema, optional = _schema(hint, f"{name}(): parameter {parameter.name}")
        properties[parameter.name] = schema
        if parameter.default is parameter.empty:
            (nullable if optional else required).append(parameter.name)
    parameters = {"type": "object", "properties": properties, "required": required}
    return Tool(name, description, parameters, function, call_parameter, tuple(nullable))


def _schema(hint, where):
    """(the JSON Schema of a type hint, whether it allows None), or ConfigError."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in arguments:
        rest = [argument for argument in arguments if argument is not type(None)]
        if len(rest) == 1:
            return _schema(rest[0], where)[0], True
    elif hint in _TYPES:
        return {"type": _TYPES[hint]}, False
    elif origin is typing.Literal and arguments:
        kinds = {type(argument) for argument in arguments}
        if len(kinds) == 1 and kinds <= set(_TYPES):
            return {"type": _TYPES[kinds.pop()], "enum": list(arguments)}, False
    elif origin is list and len(arguments) == 1:
        items, optional = _schema(arguments[0], where)
        if not optional:
            return {"type": "array", "items": items}, False
    shown = getattr(hint, "__name__", None) if origin is None else None
    raise ConfigError(
        f"tool {where}: {shown or hint} cannot be a JSON Schema (use str, int, float, bool, "
        "Literal[...], list[...] of those, or X | None)"
    )


def load_tools(module_name=None, functions=()):
    """The tools of AGENT_TOOLS's module and of `functions`, or ConfigError in one line."""
    found = list(functions)
    if module_name:
        module = _import(module_name)
        names = getattr(module, "__all__", None)
        if names is None:
            names = [
                name
                for name, value in vars(module).items()
                if inspect.isfunction(value)
                and not name.startswith("_")
                and value.__module__ == module.__name__
            ]
        found += [getattr(module, name) for name in names if callable(getattr(module, name))]
        if not found:
            raise ConfigError(
                f"AGENT_TOOLS={module_name}: no tools in it (no public functions defined in "
                "it, or an empty __all__)"
            )
    tools = [tool_from(function) for function in found]
    names = [tool.name for tool in tools]
    for name in names:
        if names.count(name) > 1 or name in BUILT_IN:
            raise ConfigError(f"tool {name}(): two tools have that name (or it is the agent's)")
    return tuple(tools)


def _import(module_name):
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # where the server starts, under any launcher
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name.split(".")[0] and error.name != module_name:
            raise ConfigError(
                f"AGENT_TOOLS={module_name}: it imports {error.name}, which is not installed"
            ) from None
        raise ConfigError(
            f"AGENT_TOOLS={module_name}: no such module (a {module_name}.py where the server "
            "starts, or an installed package)"
        ) from None
    except Exception as error:
        raise ConfigError(
            f"AGENT_TOOLS={module_name}: importing it failed: {type(error).__name__}: {error}"
        ) from None


# The agent's own tools ----------------------------------------------------------------

END_CALL = Tool(
    "end_call",
    "End the phone call. Use it when the conversation is over: the caller said goodbye, "
    "or has nothing more to ask. Say goodbye in the same answer.",
    {"type": "object", "properties": {}, "required": []},
)

TRANSFER_CALL = "transfer_call"
BUILT_IN = ("end_call", TRANSFER_CALL)


def transfer_tool(destinations):
    """transfer_call, for AGENT_TRANSFER's destinations ({name: number or sip: URI})."""
    description = (
        "Transfer the caller to a person. Use it when the caller asks for a person, or "
        "needs what you cannot do."
    )
    if len(destinations) == 1:
        return Tool(TRANSFER_CALL, description, {"type": "object", "properties": {}})
    names = list(destinations)
    properties = {"to": {"type": "string", "enum": names, "description": "who takes the call"}}
    return Tool(
        TRANSFER_CALL,
        f"{description} Choose who: {', '.join(names)}.",
        {"type": "object", "properties": properties, "required": ["to"]},
    )
