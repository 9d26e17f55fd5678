"""The Lua scripts in bo_queue/core/lua/ and their loader (bo_queue.core.scripts): every
file is used, scripts name keys only as keys.py does, terminal states come from
states.py, and every script compiles on a real redis-server (the session's, from
tests/conftest.py: the one place the unit tests start one)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import redis

from bo_queue.core import scripts
from bo_queue.core.dependencies import settled_reply
from bo_queue.core.keys import Keys
from bo_queue.states import TERMINAL_STATES, TaskState
from bo_queue.testing import RedisServer

ROOT = Path(__file__).resolve().parents[2]
CONSTANTS = {"MAX_EVENTS": 1000, "BATCH": 100, "SKIP": 100, "MAX_RUNS": 5}  # what modules fill in
# String literals with a ':' that are not key names: a reply (study_report.lua).
NOT_KEYS = {"closed:"}

_TOKEN = re.compile(r"--[^\n]*|'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")
_KEYISH = re.compile(r"\w*(?::\w*)+")  # words joined by ':', as key names are


def string_literals(lua: str) -> list[str]:
    """The string literals of Lua code (comments skipped)."""
    return [t[1:-1] for t in _TOKEN.findall(lua) if not t.startswith("--")]


def key_literals(lua: str) -> list[str]:
    """The literals that look like a piece of a key name (':task:', ':children', 'pull:')."""
    return [s for s in string_literals(lua)
            if _KEYISH.fullmatch(s) and re.search(r"[A-Za-z]", s) and s not in NOT_KEYS]


def unknown_keys(lua: str) -> list[str]:
    """The key-like literals that are no part of any key name Keys makes."""
    parts = [part for templates in scripts.key_templates().values() for t in templates
             for part in re.split(r"\{\w+\}", t) if part]
    return [s for s in key_literals(lua) if not any(s in part for part in parts)]


def named_in_modules() -> set[str]:
    """Script file names that the code names (string constants such as "record_start.lua")."""
    found: set[str] = set()
    for package in ("bo_queue", "workers", "scheduler"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and re.fullmatch(r"\w+\.lua", node.value):
                    found.add(node.value)
    return found


def raw(name: str) -> str:
    return (ROOT / "bo_queue" / "core" / "lua" / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


# -- every file is used ---------------------------------------------------------------


def test_every_lua_file_is_loaded_by_some_module() -> None:
    named = named_in_modules()
    assert named - set(scripts.files()) == set(), "a module names a file that does not exist"
    loaded, todo = set(), list(named)
    while todo:
        name = todo.pop()
        if name not in loaded:
            loaded.add(name)
            todo += scripts.includes(name)
    assert set(scripts.files()) - loaded == set(), "no module loads these, nor includes them"


def test_every_file_opens_with_its_header() -> None:
    named = named_in_modules()
    for name in scripts.files():
        header = re.match(r"(?:--[^\n]*\n)+", raw(name))
        assert header, f"{name} opens with no comment"
        if name in named:  # a script: what it takes and what it replies
            assert "KEYS" in header.group(0) or "ARGV" in header.group(0), name


# -- key names come from keys.py ------------------------------------------------------


def test_scripts_name_no_key_that_keys_py_does_not_know() -> None:
    for name in scripts.files():
        assert unknown_keys(raw(name)) == [], name


def test_scripts_build_key_names_only_through_k() -> None:
    for name in scripts.files():
        assert key_literals(raw(name)) == [], f"{name}: name keys through K (keys.lua)"


def test_the_check_catches_a_literal_key_keys_py_does_not_know() -> None:
    bad = "redis.call('SADD', ns .. ':task:' .. id .. ':shadow', x)  -- ':fine' in a comment"
    assert unknown_keys(bad) == [":shadow"]
    assert key_literals(bad) == [":task:", ":shadow"]
    assert unknown_keys("redis.call('HGET', KEYS[1], 'state') .. ':' .. 'closed:'") == []


def test_the_generated_key_names_are_the_ones_keys_makes(server: redis.Redis) -> None:
    keys, names = Keys("ns"), sorted(scripts.key_templates())
    assert "task" in names and "delayed_specs" in names and "pull_seq" in names
    lua = f"local K = {scripts.key_table(names)}\nlocal out = {{}}\n"
    for name in names:
        lua += f"for _, key in ipairs({{K.{name}('ns', 'x')}}) do table.insert(out, key) end\n"
    made = server.eval(lua + "return out", 0)
    expected: list[str] = []
    for name in names:
        member = getattr(keys, name)
        value = member("x") if callable(member) else member
        expected += list(value) if isinstance(value, tuple) else [value]
    assert made == expected


def test_a_script_that_names_a_key_keys_lacks_does_not_load(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scripts, "_read", lambda name: "return K.shadow(ARGV[1])\n")
    scripts.source.cache_clear()
    try:
        with pytest.raises(ValueError, match="no key name shadow"):
            scripts.source("bad.lua")
    finally:
        scripts.source.cache_clear()


# -- terminal states come from states.py ----------------------------------------------


def test_is_terminal_is_states_py(server: redis.Redis) -> None:
    states = [state.value for state in TaskState]
    lua = scripts.source("terminal.lua") + (
        "local out = {}\n"
        "for i, state in ipairs(ARGV) do out[i] = tostring(is_terminal(state)) end\n"
        "table.insert(out, tostring(is_terminal(nil)))\n"
        "return out"
    )
    got = server.eval(lua, 0, *states)
    assert got == [str(TaskState(s) in TERMINAL_STATES).lower() for s in states] + ["false"]


def test_no_script_spells_out_the_terminal_states() -> None:
    terminal = {state.value for state in TERMINAL_STATES}
    for name in scripts.files():
        assert not terminal <= set(string_literals(raw(name))), f"{name}: use is_terminal"


# -- loading --------------------------------------------------------------------------


@pytest.mark.parametrize("name", scripts.files())
def test_every_script_compiles_on_redis(server: redis.Redis, name: str) -> None:
    sha = server.script_load(scripts.text(name, **CONSTANTS))
    assert re.fullmatch(r"[0-9a-f]{40}", sha)


def test_includes_come_first_each_once() -> None:
    text = scripts.source("agents_claim.lua")
    order = [text.index(f"local function {f}(") for f in ("set_state", "settle", "maintain")]
    assert order == sorted(order)
    assert text.count("local function set_state(") == 1
    assert text.index("local K = {") < order[0]
    assert text.rstrip().endswith(raw("agents_claim.lua").rstrip())


def test_a_constant_left_unfilled_is_an_error() -> None:
    with pytest.raises(ValueError, match="__MAX_EVENTS__"):
        scripts.text("record_start.lua")
    with pytest.raises(ValueError, match="__SKIP__"):
        scripts.text("agents_claim.lua", MAX_EVENTS=10, BATCH=10)


def test_the_settled_reply_is_read_in_one_place() -> None:
    reply = settled_reply(["run", 2, 1, "a", "b"])
    assert (reply.value, reply.extra, reply.released, reply.cancelled) == ("run", 2, 1, ["a", "b"])
    assert settled_reply([None, None, 0]).cancelled == []
