"""Workflow definitions without Redis: conditions, references, the builder's checks, the
spec's JSON form, and what a spec compiles to (bo_queue.workflows.conditions, .models)."""

from __future__ import annotations

import re
from typing import Any

import pydantic
import pytest

from bo_queue import MissingFieldError, ValidationError, WorkflowError
from bo_queue.states import Priority
from bo_queue.workflows.conditions import (
    Condition,
    condition,
    lookup,
    ref,
    refs_in,
    resolve,
)
from bo_queue.workflows.manager import as_spec
from bo_queue.workflows.models import (
    Loop,
    Parallel,
    Step,
    Wait,
    When,
    Workflow,
    WorkflowSpec,
    compile_spec,
)

# -- condition(): text ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field", "op", "value"),
    [
        ("check.score >= 0.9", "check.score", ">=", 0.9),
        ("a.b == passed", "a.b", "==", "passed"),  # a bare word is a string
        ("a.b == 'x y'", "a.b", "==", "x y"),  # single quotes keep spaces
        ('a.b == "x y"', "a.b", "==", "x y"),
        ("a.b == true", "a.b", "==", True),  # JSON first: true is a bool, not "true"
        ("a.b == null", "a.b", "==", None),
        ("a.b != 3", "a.b", "!=", 3),
        ("a.b < -1.5", "a.b", "<", -1.5),
        ("a.b in [1, 2]", "a.b", "in", [1, 2]),
        ("a.b not in [1]", "a.b", "not in", [1]),
        ("a.b in 'abc'", "a.b", "in", "abc"),
        ("a.b contains x", "a.b", "contains", "x"),
        ("a.b exists", "a.b", "exists", None),
        ("  step_1.rows-count > 0  ", "step_1.rows-count", ">", 0),
        ("parallel.0.n == 1", "parallel.0.n", "==", 1),
        ("a.b == x.y-z", "a.b", "==", "x.y-z"),
    ],
)
def test_condition_from_text(text: str, field: str, op: str, value: Any) -> None:
    cond = condition(text)
    assert isinstance(cond, Condition)
    assert (cond.field, cond.op, cond.value) == (field, op, value)
    assert type(cond.value) is type(value)


def test_condition_from_a_tuple_a_dict_and_itself() -> None:
    assert condition(("a.b", ">", 3)) == Condition(field="a.b", op=">", value=3)
    assert condition(("a.b", "exists")) == Condition(field="a.b", op="exists")
    assert condition({"field": "a.b", "op": "in", "value": [1]}) == Condition(
        field="a.b", op="in", value=[1]
    )
    assert condition({"field": "a.b"}) == Condition(field="a.b", op="==", value=None)
    same = Condition(field="x", op="==", value=1)
    assert condition(same) is same


def test_text_tuple_and_dict_forms_agree() -> None:
    assert (
        condition("check.status == passed")
        == condition(("check.status", "==", "passed"))
        == condition({"field": "check.status", "op": "==", "value": "passed"})
    )


def test_condition_str_reads_back_as_the_same_condition() -> None:
    for text in ("a.b >= 0.9", "a.b == 'x y'", "a.b not in [1, 2]", "a.b exists", "a == true"):
        cond = condition(text)
        assert condition(str(cond)) == cond
    assert str(condition("a.b exists")) == "a.b exists"
    assert str(condition("a.b == passed")) == 'a.b == "passed"'


@pytest.mark.parametrize(
    "text",
    [
        "a.b ~ 3",  # no such operator
        "a.b ==",  # no value
        "a.b in",
        "a.b exists 3",  # exists takes none
        "status inside",  # "in" must be a whole word, not the start of "inside"
        "status inside [1]",
        "a.b == x y",  # neither JSON nor a bare word
        'a.b == "unterminated',
        "a.b == [1,",
        "a.b in 3",  # `in` needs a list or text
        "a.b not in 3",
        "== 3",
        "",
        "1abc == 3",  # a field starts with a letter or _
        "a..b == 1",
    ],
)
def test_rejected_text_raises_bo_queue_validation_error(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        condition(text)
    assert not isinstance(caught.value, pydantic.ValidationError)
    assert "bad condition" in str(caught.value)


@pytest.mark.parametrize(
    "spec",
    [
        ("a.b",),  # no operator
        ("a.b", "~", 3),
        ("bad field!", "==", 1),
        {"field": "a.b", "op": "==", "value": 1, "extra": True},
        {"op": "=="},
        {"field": "a.b", "op": "in", "value": 5},
    ],
)
def test_rejected_tuples_and_dicts_raise_bo_queue_validation_error(spec: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        condition(spec)
    assert not isinstance(caught.value, pydantic.ValidationError)


def test_condition_constructor_raises_bo_queue_validation_error() -> None:
    with pytest.raises(ValidationError) as caught:
        Condition(field="a.b", op="~", value=1)
    assert not isinstance(caught.value, pydantic.ValidationError)


# -- Condition.holds ---------------------------------------------------------------------------

CONTEXT: dict[str, Any] = {
    "input": {"n": 3, "name": "alpha"},
    "check": {"score": 0.95, "status": "passed", "tags": ["x", "y"], "deep": {"z": {"w": 1}}},
    "group": [{"n": 1}, {"n": 2}],
    "nothing": None,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("check.score >= 0.9", True),
        ("check.score > 0.95", False),
        ("check.status == passed", True),
        ("check.status != passed", False),
        ("check.deep.z.w == 1", True),
        ("group.1.n == 2", True),  # list items by index
        ("group.0.n < 1", False),
        ("input.n in [1, 2, 3]", True),
        ("input.n not in [1, 2, 3]", False),
        ("input.name in 'xalphax'", True),
        ("check.tags contains y", True),
        ("check.tags contains z", False),
        ("input.name contains lph", True),
        ("check.deep exists", True),
        ("nothing exists", True),  # present, even if null
        ("nothing == null", True),
        ("group.1 exists", True),
        ("group.2 exists", False),  # past the end
        ("check.nope exists", False),  # exists: False on a missing field, no error
        ("nope.at.all exists", False),
    ],
)
def test_holds(text: str, expected: bool) -> None:
    assert condition(text).holds(CONTEXT) is expected


@pytest.mark.parametrize(
    "text", ["check.nope == 1", "nope == 1", "group.5.n == 1", "group.x == 1", "input.n.more == 1"]
)
def test_a_missing_field_raises_missing_field(text: str) -> None:
    cond = condition(text)
    with pytest.raises(MissingFieldError) as caught:
        cond.holds(CONTEXT)
    assert isinstance(caught.value, WorkflowError)
    assert cond.field in str(caught.value)
    # ... unless the caller says what a missing field counts as
    assert cond.holds(CONTEXT, missing=False) is False
    assert cond.holds(CONTEXT, missing=True) is True


def test_missing_does_not_change_exists() -> None:
    assert condition("nope exists").holds(CONTEXT, missing=True) is False
    assert condition("check exists").holds(CONTEXT, missing=False) is True


@pytest.mark.parametrize(
    "text",
    [
        "input.name > 3",  # str > int
        "check.score contains 1",  # a float contains nothing
        "input.n in 'abc'",  # an int in a string
        "nothing < 1",
    ],
)
def test_comparing_incompatible_types_raises_workflow_error(text: str) -> None:
    with pytest.raises(WorkflowError, match="cannot compare"):
        condition(text).holds(CONTEXT)


def test_lookup_walks_dicts_and_lists() -> None:
    assert lookup(CONTEXT, "check.deep.z") == {"w": 1}
    assert lookup(CONTEXT, "group.0") == {"n": 1}
    assert lookup({"a": [[10, 20]]}, "a.0.1") == 20
    with pytest.raises(MissingFieldError, match=r"'a\.0\.2'"):
        lookup({"a": [[10, 20]]}, "a.0.2")


# -- references --------------------------------------------------------------------------------


def test_ref_is_stored_as_ctx() -> None:
    assert ref("extract.rows") == {"$ctx": "extract.rows"}
    assert ref("input.x") == {"$ctx": "input.x"}
    for bad in ("", "a b", "a..b", "$x", "a.b!"):
        with pytest.raises(ValidationError, match="bad reference"):
            ref(bad)


def test_refs_in_finds_every_reference() -> None:
    payload = {
        "a": ref("input.a"),
        "nested": {"b": ref("step.b"), "list": [1, ref("loop.iterations"), {"c": ref("x.0")}]},
        "plain": "text",
        "not_a_ref": {"$ctx": "ignored.too", "other": 1},
        "schema": {"$ref": "#/definitions/thing"},
    }
    assert sorted(refs_in(payload)) == ["input.a", "loop.iterations", "step.b", "x.0"]
    assert refs_in([ref("a.b")]) == ["a.b"]
    assert refs_in(ref("a.b")) == ["a.b"]
    assert refs_in({}) == []
    assert refs_in("text") == []


def test_resolve_replaces_references_in_nested_dicts_and_lists() -> None:
    context = {"input": {"a": 1}, "step": {"rows": [1, 2], "meta": {"k": "v"}}}
    payload = {
        "a": ref("input.a"),
        "rows": ref("step.rows"),
        "deep": {"list": [ref("step.meta"), {"k": ref("step.meta.k")}, 7], "s": "x"},
        "second": ref("step.rows.1"),
    }
    assert resolve(payload, context) == {
        "a": 1,
        "rows": [1, 2],
        "deep": {"list": [{"k": "v"}, {"k": "v"}, 7], "s": "x"},
        "second": 2,
    }
    assert payload["a"] == {"$ctx": "input.a"}  # the definition is not changed
    assert resolve([ref("input.a"), 2], context) == [1, 2]
    assert resolve(ref("input"), context) == {"a": 1}


def test_resolve_leaves_dicts_that_are_not_exactly_a_reference() -> None:
    context = {"input": {"a": 1}}
    mixed = {"$ctx": "input.a", "default": 0}
    assert resolve(mixed, context) == mixed
    assert resolve({"outer": mixed}, context) == {"outer": mixed}
    # "$ref" is JSON Schema's, never ours
    schema = {"$ref": "input.a"}
    assert resolve(schema, context) == {"$ref": "input.a"}
    assert resolve({"items": {"$ref": "#/defs/x"}}, context) == {"items": {"$ref": "#/defs/x"}}
    assert refs_in(schema) == []


def test_resolve_raises_missing_field_for_an_absent_reference() -> None:
    with pytest.raises(MissingFieldError, match=r"'step\.nope'"):
        resolve({"x": [ref("step.nope")]}, {"step": {}})


# -- nodes and the builder's checks ------------------------------------------------------------


def test_step_constructor_and_options() -> None:
    step = Step("load", "etl.load", {"x": 1}, queue="fast", priority="high")
    assert (step.name, step.handler, step.payload, step.queue) == ("load", "etl.load", {"x": 1},
                                                                    "fast")
    assert step.priority is Priority.HIGH
    assert Step("s", "h").payload == {}
    assert Step("s", "h").priority is Priority.NORMAL


@pytest.mark.parametrize(
    "build",
    [
        lambda: Step("bad name!", "h"),
        lambda: Step("", "h"),
        lambda: Step("1starts_with_digit", "h"),
        lambda: Step("x" * 65, "h"),
        lambda: Step("s", ""),
        lambda: Step("s", "h", unknown_option=1),
        lambda: Step("s", "h", priority="bogus"),
        lambda: Parallel(name="p", steps=()),
        lambda: Parallel(name="p", steps=[]),
        lambda: Loop(name="l", body=(Step("s", "h"),), until=condition("s exists"),
                     max_iterations=0),
        lambda: Loop(name="l", body=(Step("s", "h"),), until=condition("s exists"),
                     max_iterations=10_001),
        lambda: Loop(name="l", body=(), until=condition("s exists"), max_iterations=1),
        lambda: Wait(name="w", seconds=0),
        lambda: Wait(name="w", seconds=-1),
        lambda: When(name="bad name", condition=condition("a exists")),
    ],
)
def test_bad_nodes_raise_bo_queue_validation_error(build: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        build()
    assert not isinstance(caught.value, pydantic.ValidationError)


def test_step_names_must_be_unique() -> None:
    with pytest.raises(ValidationError, match="two steps are named 'a'"):
        Workflow().step("a", "h").step("a", "h").spec()
    # also across a parallel group, a branch and a loop body
    with pytest.raises(ValidationError, match="'c'"):
        Workflow().parallel("p", [Step("c", "h"), Step("c", "h")]).spec()
    with pytest.raises(ValidationError, match="'a'"):
        Workflow().step("a", "h").when("a exists", then=Step("a", "h"), name="w").spec()
    with pytest.raises(ValidationError, match="'l'"):
        Workflow().loop("l", Step("l", "h"), until="l.iterations >= 1",
                        max_iterations=2).spec()
    with pytest.raises(ValidationError, match="'x'"):
        Workflow().step("x", "h").wait(seconds=1, name="x").spec()


@pytest.mark.parametrize("name", ["input", "vars"])
def test_reserved_step_names(name: str) -> None:
    with pytest.raises(ValidationError, match="reserved"):
        Workflow().step(name, "h").spec()
    with pytest.raises(ValidationError, match="reserved"):
        Workflow().parallel("p", [Step(name, "h")]).spec()
    with pytest.raises(ValidationError, match="reserved"):
        Workflow().wait(seconds=1, name=name).spec()


def test_a_loop_needs_max_iterations() -> None:
    with pytest.raises(ValidationError, match="max_iterations"):
        Workflow().loop("l", Step("s", "h"), until="s.done == true")
    with pytest.raises(ValidationError) as caught:
        Workflow().loop("l", Step("s", "h"), until="s.done == true", max_iterations=0)
    assert not isinstance(caught.value, pydantic.ValidationError)
    with pytest.raises(ValidationError):
        Workflow().loop("l", Step("s", "h"), until="s.done == true", max_iterations=-1)


def test_conditions_may_only_read_what_runs_before_them() -> None:
    with pytest.raises(ValidationError, match=r"'later\.x'"):
        Workflow().when("later.x == 1", then=Step("a", "h")).step("later", "h").spec()
    with pytest.raises(ValidationError, match="'nope'"):
        Workflow().step("a", "h", {"x": ref("nope.x")}).spec()
    # a step reading a sibling in its own parallel group has not got it yet
    with pytest.raises(ValidationError, match=r"'one\.x'"):
        Workflow().parallel("p", [Step("one", "h"), Step("two", "h", {"x": ref("one.x")})]).spec()
    # ... and a later step in the same loop body is not there on the first iteration
    with pytest.raises(ValidationError, match=r"'b\.x'"):
        Workflow().loop("l", [Step("a", "h", {"x": ref("b.x")}), Step("b", "h")],
                        until="b.done == true", max_iterations=3).spec()
    # a when's then branch cannot read the otherwise branch
    with pytest.raises(ValidationError, match=r"'o\.x'"):
        Workflow().step("a", "h").when(
            "a.ok == true", then=Step("t", "h", {"x": ref("o.x")}), otherwise=Step("o", "h")
        ).spec()


def test_readable_fields_pass() -> None:
    spec = (
        Workflow("ok")
        .step("a", "h", {"x": ref("input.x"), "v": ref("vars.v")})
        .parallel("p", [Step("b", "h", {"a": ref("a.out")}), Step("c", "h")])
        .when("p.0 exists", then=Step("d", "h", {"b": ref("b.y"), "c": ref("c")}))
        .loop("l", [Step("e", "h", {"i": ref("l.iterations")})],  # the loop's own counter
              until="e.done == true", max_iterations=5)
        .step("f", "h", {"d": ref("d"), "e": ref("e.out"), "l": ref("l.iterations")})
        .wait(until="vars.go == true")
        .spec()
    )
    names = [node.name for node in spec.steps]
    assert names[:2] == ["a", "p"] and names[3:5] == ["l", "f"]
    assert re.fullmatch(r"when_\d+", names[2]) and re.fullmatch(r"wait_\d+", names[5])


def test_automatic_names_do_not_clash_across_fragments() -> None:
    inner = Workflow().wait(1.0).step("poll", "h")
    spec = Workflow().wait(1.0).loop("l", inner, until="poll.ok == true", max_iterations=2).spec()
    outer, loop = spec.steps[0], spec.steps[1]
    assert isinstance(loop, Loop)
    assert outer.name != loop.body[0].name


def test_a_wait_may_only_wait_on_vars() -> None:
    with pytest.raises(ValidationError, match="wait on vars"):
        Workflow().step("a", "h").wait(until="a.done == true").spec()
    with pytest.raises(ValidationError, match="wait on vars"):
        Workflow().wait(until="input.x == 1").spec()
    spec = Workflow().wait(until="vars.go == true", timeout_s=5).spec()
    wait = spec.steps[0]
    assert isinstance(wait, Wait)
    assert wait.until == condition("vars.go == true")
    assert wait.timeout_s == 5


def test_wait_takes_seconds_or_until_not_both_nor_neither() -> None:
    with pytest.raises(ValidationError, match="one of them"):
        Workflow().wait()
    with pytest.raises(ValidationError, match="one of them"):
        Workflow().wait(5, until="vars.go == true")
    wait = Workflow().wait(5).spec().steps[0]
    assert wait == Wait(name=wait.name, seconds=5)


@pytest.mark.parametrize(
    "wait",
    [
        {"kind": "wait", "name": "w"},  # neither: the run would wait forever
        {"kind": "wait", "name": "w", "seconds": 3,
         "until": {"field": "vars.go", "op": "==", "value": True}},  # both: seconds ignored
    ],
)
def test_a_wait_given_as_json_takes_seconds_or_until_too(wait: dict[str, Any]) -> None:
    # A definition may come as JSON (bq.workflows.run(dict), the schedule starter); the
    # builder's rule that a wait has exactly one of seconds and until must hold there too.
    with pytest.raises(ValidationError):
        as_spec({"name": "json", "steps": [wait]})


def test_unknown_node_kind_is_rejected() -> None:
    with pytest.raises(ValidationError):
        as_spec({"name": "x", "steps": [{"kind": "teleport", "name": "t"}]})
    with pytest.raises(ValidationError):
        WorkflowSpec(name="x", steps=())


# -- the spec ------------------------------------------------------------------------------------


def etl() -> Workflow:
    return (
        Workflow("etl")
        .step("extract", "etl.extract", {"source": ref("input.source")}, queue="q",
              priority="high")
        .parallel("transform", [Step("clean", "etl.clean", {"n": ref("input.n")}),
                                Step("stats", "etl.stats")])
        .when("stats.rows > input.min", then=Step("load", "etl.load"),
              otherwise=Step("log", "etl.log"))
        .loop("poll", Step("check", "etl.check", {"limit": ref("input.limit.max")}),
              until="check.done == true", max_iterations=10)
        .wait(seconds=5)
        .wait(until="vars.approved == true", timeout_s=30)
    )


def test_input_fields_and_handlers() -> None:
    spec = etl().spec()
    # "stats.rows > input.min" compares with the text "input.min": it reads no input
    assert spec.input_fields() == ["limit", "n", "source"]
    assert spec.handlers() == [
        "etl.check", "etl.clean", "etl.extract", "etl.load", "etl.log", "etl.stats"
    ]
    gated = Workflow().when("input.go == true", then=Step("a", "h")).spec()
    assert gated.input_fields() == ["go"]
    assert gated.handlers() == ["h"]
    assert Workflow().step("a", "h", {"i": ref("input")}).spec().input_fields() == []


def test_json_round_trip() -> None:
    spec = etl().spec()
    again = WorkflowSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert again.model_dump() == spec.model_dump()
    assert compile_spec(again) == compile_spec(spec)
    assert as_spec(spec.model_dump(mode="json")) == spec
    extract = again.steps[0]
    assert isinstance(extract, Step)
    assert extract.priority is Priority.HIGH
    assert extract.payload == {"source": {"$ctx": "input.source"}}


# -- compile_spec ------------------------------------------------------------------------------


def ops(program: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(ins["op"], ins.get("name", "")) for ins in program]


def test_compile_steps_and_a_parallel_group() -> None:
    program = compile_spec(
        Workflow().step("a", "h.a", {"x": 1}, queue="q", priority="low")
        .parallel("p", [Step("b", "h.b"), Step("c", "h.c")]).spec()
    )
    assert program[0] == {
        "op": "run", "name": "a", "group": False,
        "steps": [{"name": "a", "kind": "step", "handler": "h.a", "payload": {"x": 1},
                   "queue": "q", "priority": int(Priority.LOW)}],
    }
    assert program[1]["op"] == "run" and program[1]["group"] is True
    assert [s["name"] for s in program[1]["steps"]] == ["b", "c"]
    assert len(program) == 2


def test_compile_when_otherwise() -> None:
    spec = (
        Workflow().step("a", "h")
        .when("a.ok == true", then=[Step("t1", "h"), Step("t2", "h")],
              otherwise=Step("o1", "h"), name="pick")
        .step("after", "h").spec()
    )
    program = compile_spec(spec)
    assert ops(program) == [
        ("run", "a"), ("branch", "pick"), ("run", "t1"), ("run", "t2"), ("jump", ""),
        ("run", "o1"), ("run", "after"),
    ]
    branch, jump = program[1], program[4]
    assert branch["cond"] == {"field": "a.ok", "op": "==", "value": True}
    assert branch["else"] == 5 and program[branch["else"]]["name"] == "o1"
    assert jump["to"] == 6 and program[jump["to"]]["name"] == "after"


def test_compile_when_without_otherwise_or_then() -> None:
    program = compile_spec(Workflow().when("vars.x exists", then=Step("t", "h"), name="w")
                           .step("after", "h").spec())
    assert ops(program) == [("branch", "w"), ("run", "t"), ("jump", ""), ("run", "after")]
    assert program[0]["else"] == 3 and program[2]["to"] == 3
    program = compile_spec(Workflow().when("vars.x exists", otherwise=Step("o", "h"), name="w")
                           .spec())
    assert ops(program) == [("branch", "w"), ("jump", ""), ("run", "o")]
    assert program[0]["else"] == 2 and program[1]["to"] == 3  # past the end: done


def test_compile_a_loop() -> None:
    program = compile_spec(
        Workflow().step("first", "h")
        .loop("poll", [Step("check", "h"), Step("log", "h")], until="check.done == true",
              max_iterations=7)
        .spec()
    )
    assert ops(program) == [
        ("run", "first"), ("loop_start", "poll"), ("run", "check"), ("run", "log"),
        ("loop_end", "poll"),
    ]
    end = program[4]
    assert end["body"] == 2 and program[end["body"]]["name"] == "check"  # not loop_start
    assert end["max"] == 7
    assert end["until"] == {"field": "check.done", "op": "==", "value": True}


def test_compile_nested_loops() -> None:
    inner = Workflow().loop("inner", Step("s", "h"), until="s.ok == true", max_iterations=3)
    program = compile_spec(
        Workflow().loop("outer", [Step("before", "h"), *inner.nodes],
                        until="outer.iterations >= 2", max_iterations=4).spec()
    )
    assert ops(program) == [
        ("loop_start", "outer"), ("run", "before"), ("loop_start", "inner"), ("run", "s"),
        ("loop_end", "inner"), ("loop_end", "outer"),
    ]
    assert program[4]["body"] == 3  # the inner loop repeats its own body
    assert program[5]["body"] == 1  # the outer one re-enters at its first step ...
    assert program[program[5]["body"]]["name"] == "before"
    # ... so its body starts the inner loop afresh each time
    assert program[2] == {"op": "loop_start", "name": "inner"}
    assert (program[4]["max"], program[5]["max"]) == (3, 4)


def test_compile_waits() -> None:
    program = compile_spec(
        Workflow().wait(2.5, name="nap")
        .wait(until="vars.go == true", timeout_s=9, name="gate").spec()
    )
    assert program == [
        {"op": "wait", "name": "nap", "seconds": 2.5, "until": None, "timeout_s": None},
        {"op": "wait", "name": "gate", "seconds": None,
         "until": {"field": "vars.go", "op": "==", "value": True}, "timeout_s": 9},
    ]


@pytest.mark.parametrize(
    "fragment",
    [
        Workflow().step("x", "h").step("y", "h"),  # a builder: its nodes
        [Step("x", "h"), Step("y", "h")],  # a list
        (Step("x", "h"), Step("y", "h")),  # a tuple
    ],
)
def test_fragments_as_a_workflow_or_a_list(fragment: Any) -> None:
    spec = (
        Workflow().step("a", "h")
        .when("a.ok == true", then=fragment, otherwise=Step("o", "h"), name="w")
        .loop("l", fragment_copy(fragment, "l_"), until="l_y.done == true", max_iterations=2)
        .spec()
    )
    program = compile_spec(spec)
    assert ops(program) == [
        ("run", "a"), ("branch", "w"), ("run", "x"), ("run", "y"), ("jump", ""), ("run", "o"),
        ("loop_start", "l"), ("run", "l_x"), ("run", "l_y"), ("loop_end", "l"),
    ]
    assert program[1]["else"] == 5 and program[4]["to"] == 6
    assert program[9]["body"] == 7


def fragment_copy(fragment: Any, prefix: str) -> Any:
    """The same fragment, in the same form, with its step names prefixed."""
    steps = fragment.nodes if isinstance(fragment, Workflow) else fragment
    renamed = [Step(prefix + s.name, s.handler) for s in steps]
    if isinstance(fragment, Workflow):
        built = Workflow()
        for step in renamed:
            built.step(step.name, step.handler)
        return built
    return type(fragment)(renamed)


def test_a_single_step_as_a_fragment() -> None:
    spec = (
        Workflow().step("a", "h")
        .when("a.ok == true", then=Step("t", "h"), otherwise=Step("o", "h"), name="w")
        .loop("l", Step("s", "h"), until="s.done == true", max_iterations=2)
        .spec()
    )
    when, loop = spec.steps[1], spec.steps[2]
    assert isinstance(when, When) and isinstance(loop, Loop)
    assert when.then == (Step("t", "h"),) and when.otherwise == (Step("o", "h"),)
    assert loop.body == (Step("s", "h"),)
    assert ops(compile_spec(spec)) == [
        ("run", "a"), ("branch", "w"), ("run", "t"), ("jump", ""), ("run", "o"),
        ("loop_start", "l"), ("run", "s"), ("loop_end", "l"),
    ]
    # a parallel group is a fragment too
    par = Workflow().loop("l", Parallel(name="p", steps=(Step("a", "h"), Step("b", "h"))),
                          until="p.0 exists", max_iterations=2).spec()
    assert ops(compile_spec(par)) == [("loop_start", "l"), ("run", "p"), ("loop_end", "l")]
