"""The Lua scripts: one file per script in bo_queue/core/lua/, and the one loader.

A script file opens with its header (KEYS, ARGV and reply). If it uses shared helpers, its
first line names the files that hold them:

    -- include: settle.lua

Included files come first, each once, their own includes before them (settle.lua
includes dependencies.lua, which includes set_state.lua, which includes keys.lua and
terminal.lua), then the file itself. Then placeholders written `__NAME__` are filled in:

- `__KEY_NAMES__` (keys.lua) with a table generated from `bo_queue.core.keys.Keys`: one
  function per key name, taking the namespace and the key's own argument, so that
  `K.task(ns, id)` is `Keys(ns).task(id)`, `K.failed(ns)` is `Keys(ns).failed`, and a name
  of two keys returns both (`K.slots`). Scripts that build key names (from the namespace
  they get as ARGV) do so only through `K`: a key name is defined once, in keys.py. The
  table holds the names the script uses, and one that `Keys` lacks is an error when the
  script is loaded. The namespace stays an argument, not part of the text, so that one
  text (one SHA) serves every namespace.
- `__TERMINAL_STATES__` (terminal.lua) with the set of `bo_queue.states.TERMINAL_STATES`,
  behind `is_terminal(state)`.
- the constants the caller gives: `register(client, "agents_claim.lua", BATCH=100)` fills
  `__BATCH__`. A placeholder left without a value is an error when the script is loaded.

Each file's text, with its includes and the generated tables, is read once per process.
"""

from __future__ import annotations

import functools
import inspect
import re
from importlib import resources

import redis
from redis.commands.core import Script

from bo_queue.core.keys import Keys
from bo_queue.states import TERMINAL_STATES

__all__ = ["files", "includes", "key_table", "key_templates", "register", "source", "text"]

_INCLUDE = re.compile(r"^-- include:(.*)$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"__([A-Z][A-Z0-9_]*)__")
_KEY_USE = re.compile(r"\bK\.([A-Za-z_]\w*)")
_COMMENT = re.compile(r"--[^\n]*")
_MARK = "\x00"  # around the parameters of a key name while its template is read
_LUA_WORDS = frozenset({
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in",
    "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
})


def files() -> list[str]:
    """Every script and shared file, by file name."""
    folder = resources.files(__package__ or "bo_queue.core").joinpath("lua")
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".lua"))


def includes(name: str) -> list[str]:
    """The files `name` includes itself (not theirs)."""
    return [n for line in _INCLUDE.findall(_read(name)) for n in re.split(r"[\s,]+", line) if n]


@functools.cache
def source(name: str) -> str:
    """The text of `name` with its includes and the generated tables, constants unfilled."""
    order: list[str] = []
    _collect(name, order, ())
    body = "".join(_read(n) for n in order)
    used = sorted(set(_KEY_USE.findall(_COMMENT.sub("", body))))
    unknown = [key for key in used if key not in _key_names()]
    if unknown:
        raise ValueError(f"{name}: Keys has no key name {', '.join(unknown)}")
    generated = {"KEY_NAMES": key_table(used), "TERMINAL_STATES": _lua_terminal()}
    return _PLACEHOLDER.sub(lambda m: generated.get(m.group(1), m.group(0)), body)


def text(name: str, **constants: int) -> str:
    """The script `name`, ready to run: `constants` fill its `__NAME__` placeholders."""
    values = {key: str(int(value)) for key, value in constants.items()}

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise ValueError(f"{name}: no value given for {match.group(0)}")
        return values[match.group(1)]

    return _PLACEHOLDER.sub(fill, source(name))


def register(client: redis.Redis, name: str, **constants: int) -> Script:
    """The script `name` registered with `client` (run by SHA, loaded when missing)."""
    return client.register_script(text(name, **constants))


def key_templates() -> dict[str, tuple[str, ...]]:
    """Every key name `Keys` makes, as templates: {'task': ('{ns}:task:{task_id}',), ...}."""
    return {
        name: tuple(
            "".join(f"{{{part}}}" if i % 2 else part for i, part in enumerate(parts))
            for parts in shapes
        )
        for name, (_, shapes) in _key_names().items()
    }


# -- reading files ------------------------------------------------------------------------


@functools.cache
def _read(name: str) -> str:
    if "/" in name or not name.endswith(".lua"):
        raise ValueError(f"not a script file name: {name!r}")
    found = resources.files(__package__ or "bo_queue.core").joinpath("lua", name)
    body = found.read_text(encoding="utf-8")
    return body if body.endswith("\n") else body + "\n"


def _collect(name: str, order: list[str], path: tuple[str, ...]) -> None:
    """Append `name` to `order` after what it includes, depth first, each file once."""
    if name in order:
        return
    if name in path:
        raise ValueError(f"include cycle: {' -> '.join((*path, name))}")
    for included in includes(name):
        _collect(included, order, (*path, name))
    order.append(name)


# -- the generated tables -----------------------------------------------------------------


@functools.cache
def _key_names() -> dict[str, tuple[list[str], list[list[str]]]]:
    """Each key name of `Keys`: its parameters, and each key it makes split into parts,
    literal text at even positions and parameter names (`ns` first) at odd ones."""
    keys = Keys(f"{_MARK}ns{_MARK}")
    out: dict[str, tuple[list[str], list[list[str]]]] = {}
    for name, member in vars(Keys).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            params: list[str] = []
            made = getattr(keys, name)
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            made = member(keys, *(f"{_MARK}{p}{_MARK}" for p in params))
        else:
            continue
        shapes = [str(key).split(_MARK) for key in (made if isinstance(made, tuple) else (made,))]
        bad = [w for w in [name, *params] if not w.isidentifier() or w in _LUA_WORDS]
        if bad or "ns" in params:  # `ns` is the namespace, every function's first parameter
            raise ValueError(f"Keys.{name}: {(bad or ['ns'])[0]!r} cannot be a Lua name here")
        out[name] = (params, shapes)
    return out


def key_table(names: list[str]) -> str:
    """The Lua table K with these key names of `Keys`. A script's K holds only the names it
    uses: building the whole table would cost every call a few microseconds of Redis."""
    lines = []
    for name in names:
        params, shapes = _key_names()[name]
        made = ", ".join(
            " .. ".join(p if i % 2 else _lua_string(p) for i, p in enumerate(parts) if p)
            for parts in shapes
        )
        lines.append(f"  {name} = function({', '.join(['ns', *params])}) return {made} end,")
    return "{\n" + "\n".join(lines) + "\n}"


def _lua_terminal() -> str:
    return "{" + ", ".join(f"{state.value} = true" for state in sorted(TERMINAL_STATES)) + "}"


def _lua_string(value: str) -> str:
    if not value.isprintable():
        raise ValueError(f"a key name holds an unprintable character: {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
