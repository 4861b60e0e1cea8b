"""The agent's tools from plain Python functions (mediastream/tools.py), with no I/O: their
schemas, the model's arguments checked against them, and a bad AGENT_TOOLS said in one line."""

import subprocess
import sys
from typing import Literal

import pytest
from conftest import REPO

from mediastream.config import ConfigError
from mediastream.tools import BadArguments, Call, load_tools, result_text, tool_from


def book_table(
    name: str,
    people: int,
    time: Literal["18:00", "19:00", "20:00"],
    outside: bool = False,
    budget: float | None = None,
    allergies: list[str] | None = None,
    call: Call = None,
) -> dict:
    """Book a table.

    For one evening only."""
    return {"booked": name, "people": people, "for": call.call_sid if call else None}


def test_a_functions_type_hints_become_the_json_schema_openai_takes():
    tool = tool_from(book_table)
    assert tool.schema() == {
        "type": "function",
        "function": {
            "name": "book_table",
            "description": "Book a table.\n\nFor one evening only.",
            "parameters": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "people": {"type": "integer"},
                    "time": {"type": "string", "enum": ["18:00", "19:00", "20:00"]},
                    "outside": {"type": "boolean"},
                    "budget": {"type": "number"},
                    "allergies": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["name", "people", "time"],
            },
        },
    }
    assert tool.call_parameter == "call"  # the Call is the server's to give, not the model's


def test_the_models_arguments_are_checked_and_the_call_is_given():
    tool = tool_from(book_table)
    arguments = tool.arguments('{"name": "Ada", "people": 4.0, "time": "19:00", "budget": null}')
    assert arguments == {"name": "Ada", "people": 4, "time": "19:00"}
    call = Call("CA1", "MZ1", "tag", {"From": "+15550100"})
    assert tool.run(arguments, call) == '{"booked":"Ada","people":4,"for":"CA1"}'


@pytest.mark.parametrize(
    "arguments, problem",
    [
        ('{"name": "Ada"', "the arguments are not JSON"),
        ("[1]", "the arguments must be a JSON object"),
        ('{"name": "Ada", "time": "19:00"}', "missing: people"),
        ('{"name": "A", "people": 4, "time": "19:00", "pets": 1}', "no such parameter: pets"),
        ('{"name": "A", "people": "four", "time": "19:00"}', 'people must be an integer, not "fo'),
        ('{"name": "A", "people": 4, "time": "21:00"}', "time must be one of 18:00, 19:00, 20:00"),
        ('{"name": "A", "people": true, "time": "19:00"}', "people must be an integer, not true"),
        ('{"name": "A", "people": 4, "time": "19:00", "allergies": [1]}', "allergies.0. must be"),
    ],
)  # fmt: skip
def test_arguments_that_do_not_fit_say_how(arguments, problem):
    with pytest.raises(BadArguments, match=problem.replace("[", r"\[")):
        tool_from(book_table).arguments(arguments)


def test_results_are_text_as_it_is_or_json():
    assert result_text("Shipped.") == "Shipped."
    assert result_text({"eta": 3}) == '{"eta":3}'
    assert result_text(None) == "null"
    assert result_text({1, 2}) in ("{1, 2}", "{2, 1}")  # not JSON: its str()


def no_docstring(x: str):
    pass


def untyped(x):
    """Untyped."""


def a_dict(x: dict):
    """A dict."""


def mixed(x: Literal["a", 1]):
    """Mixed."""


@pytest.mark.parametrize(
    "function, says",
    [
        (no_docstring, "tool no_docstring() has no docstring"),
        (untyped, "tool untyped(): parameter x has no type hint"),
        (a_dict, "tool a_dict(): parameter x: dict cannot be a JSON Schema"),
        (mixed, "cannot be a JSON Schema"),
    ],
)
def test_a_function_that_cannot_be_a_tool_says_why(function, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        load_tools(None, [function])


def test_agent_tools_takes_all_or_the_public_functions_of_a_module(tmp_path, monkeypatch):
    (tmp_path / "some_tools.py").write_text(
        "from os.path import join\n\n"
        "def lookup(q: str) -> str:\n    '''Look up.'''\n\n"
        "def _helper():\n    pass\n"
    )
    (tmp_path / "listed.py").write_text(
        "__all__ = ['b']\n\ndef a(x: int):\n    '''A.'''\n\ndef b(x: int):\n    '''B.'''\n"
    )
    (tmp_path / "empty.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    assert [tool.name for tool in load_tools("some_tools")] == ["lookup"]  # not join, _helper
    assert [tool.name for tool in load_tools("listed")] == ["b"]
    with pytest.raises(ConfigError, match="AGENT_TOOLS=empty: no tools in it"):
        load_tools("empty")
    with pytest.raises(ConfigError, match="AGENT_TOOLS=nowhere: no such module"):
        load_tools("nowhere")
    with pytest.raises(ConfigError, match="two tools have that name"):
        load_tools("some_tools", [end_call])


def end_call():
    """Mine."""


@pytest.mark.parametrize(
    "module, line",
    [
        ("nowhere", "configuration error: AGENT_TOOLS=nowhere: no such module"),
        ("broken_tools", "configuration error: tool lookup(): parameter q has no type hint"),
    ],
)
def test_a_bad_agent_tools_stops_the_server_with_one_line(tmp_path, module, line):
    (tmp_path / "broken_tools.py").write_text("def lookup(q):\n    '''Look up.'''\n")
    environ = {"AGENT": "http://127.0.0.1:9/v1", "AGENT_TOOLS": module, "PORT": "0"}
    started = subprocess.run(
        [sys.executable, str(REPO / "app.py")],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 1 and started.stderr.strip().splitlines()[-1].startswith(line), (
        started.stderr
    )
    assert "Traceback" not in started.stderr
