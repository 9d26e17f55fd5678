"""The dependencies and workflow tour (docs/workflows.md), runnable: `python -m examples.flows`
with a worker running `--import examples.etl` and BO_QUEUE_REDIS_URL pointing at its Redis."""

from __future__ import annotations

from bo_queue import BOQueue, Step, Workflow, ref


def dependencies(bq: BOQueue) -> dict[str, object]:
    a = bq.submit("etl.extract", {"day": "2026-11-21"})
    b = bq.submit("etl.clean", depends_on=[a])            # PENDING until a SUCCEEDED
    c = bq.submit("etl.stats", depends_on=[a])
    d = bq.submit("etl.load", depends_on=[b, c])          # reads b's and c's results
    plan = bq.plan([a.id, b.id, c.id, d.id])              # [[a], [b, c], [d]]
    dot = bq.graph([d.id]).to_dot()                       # Graphviz: tasks, handlers, states
    return {"load": d.get(timeout=60), "stats": c.get(timeout=5),
            "plan": plan == [[a.id], [b.id, c.id], [d.id]], "dot": dot}


def workflow(bq: BOQueue) -> dict[str, object]:
    wf = (Workflow("etl")
          .step("extract", "etl.extract", {"day": ref("input.day")})
          .parallel("fan", [Step("clean", "etl.clean", {"rows": ref("extract.rows")}),
                            Step("stats", "etl.stats", {"rows": ref("extract.rows")})])
          .when("stats.count > 0", then=Step("load", "etl.load"),
                otherwise=Step("skip", "etl.log"))
          .loop("poll", Step("check", "etl.check", {"day": ref("input.day")}),
                until="check.done == true", max_iterations=10)
          .wait(seconds=1)
          .wait(until="vars.approved == true", timeout_s=3600))
    run = bq.workflows.run(wf, {"day": "2026-11-21"})
    bq.workflows.set_vars(run.id, approved=True)
    done = bq.workflows.wait(run.id, timeout=120)
    return {"status": done.status.value, "stats": done.context["stats"],
            "polls": done.context["poll"]["iterations"], "loaded": "load" in done.steps}


if __name__ == "__main__":
    with BOQueue.from_env() as queue:
        print(dependencies(queue))
        print(workflow(queue))
