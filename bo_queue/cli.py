"""The `bo-queue` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bo_queue.config import ENV_PREFIX, Settings
from bo_queue.errors import BOQueueError
from bo_queue.validation import utc

if TYPE_CHECKING:
    from bo_queue.core.records import TaskTree


def _worker(args: argparse.Namespace) -> int:
    """Become `celery -A workers.app worker` with bo_queue's settings (same pid)."""
    env = dict(os.environ)
    imports = [m for m in env.get(f"{ENV_PREFIX}IMPORTS", "").split(",") if m.strip()]
    imports += [m for group in args.imports for m in group.split(",") if m.strip()]
    if imports:
        env[f"{ENV_PREFIX}IMPORTS"] = ",".join(dict.fromkeys(imports))
    if args.capabilities is not None:
        env[f"{ENV_PREFIX}CAPABILITIES"] = args.capabilities
    if args.offers is not None:
        env[f"{ENV_PREFIX}OFFERS"] = args.offers
    os.environ.update(env)
    settings = Settings.load()  # fail here, clearly, rather than inside celery
    queues = [q.strip() for q in (args.queues or ",".join(settings.queues)).split(",") if q.strip()]
    unknown = [q for q in queues if q not in settings.queues]
    if unknown:
        raise BOQueueError(
            f"unknown queue(s) {', '.join(unknown)}; configured: {', '.join(settings.queues)} "
            f"(set {ENV_PREFIX}QUEUES to add more)"
        )
    argv = [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker",
        "--queues", ",".join(queues), "--loglevel", args.loglevel, "--pool", args.pool,
        # Mingle syncs Celery's in-memory revoked set from the other workers, a second at
        # every start; bo_queue's cancel lives in the task's record, which a run reads.
        "--without-mingle",
    ]
    if settings.log_json:  # no banner: every line of the log is a JSON object
        argv.insert(3, "--quiet")
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    return _celery(argv)
    return 0  # not reached


def _study(args: argparse.Namespace) -> int:
    """bo-queue study create|run|status|best|export: against BO_QUEUE_REDIS_URL."""
    import json
    from pathlib import Path

    from bo_queue.client import BOQueue
    from bo_queue.studies.models import WARM_START

    with BOQueue.from_env() as bq:
        studies = bq.studies
        if args.action == "create":
            spec = json.loads(Path(args.spec).read_text())
            study = studies.create_from_spec(spec)
            print(study.id)
            if args.run:
                studies.run(study.id)
            return 0
        if args.action == "run":
            studies.run(args.study_id)
            if args.wait:
                study = studies.wait(args.study_id, timeout=args.timeout)
                print(f"{study.id} {study.status} {study.message}")
                return 0 if study.status == "COMPLETED" else 1
            return 0
        if args.action == "status":
            study = studies.get(args.study_id)
            strategy = study.spec.strategy
            trials = studies.trials(args.study_id)
            print(f"{study.id}  {study.name}  {study.status}  {study.message}".rstrip())
            if study.description:
                print(f"description: {study.description}")
            if study.metadata:
                print(f"metadata: {json.dumps(study.metadata, sort_keys=True)}")
            if study.warm_start_from:
                attached = sum(t.generator == WARM_START for t in trials)
                print(f"warm-started from: {', '.join(study.warm_start_from)} "
                      f"({attached} trials attached)")
            print(f"trials: {study.completed_trials}/{strategy.max_trials} completed, "
                  f"{study.running_trials} running, {study.failed_trials} failed")
            for trial in trials:
                values = json.dumps(trial.values) if trial.values else trial.error or ""
                print(f"  {trial.index:>4}  {trial.status:<9}  {trial.generator:<18}  {values}")
            return 0
        if args.action == "best":
            best = studies.best(args.study_id)
            print(json.dumps(None if best is None else best.model_dump(mode="json"), indent=2))
            return 0 if best is not None else 1
        if args.format == "csv":
            text = studies.export(args.study_id, format="csv")
        else:
            text = json.dumps(studies.export(args.study_id, include_model=args.model), indent=2)
        if args.out:
            Path(args.out).write_text(text)
        else:
            print(text, end="" if text.endswith("\n") else "\n")
        return 0


def _beat(args: argparse.Namespace) -> int:
    """Become `celery -A scheduler.app beat` with the redbeat scheduler (same pid)."""
    settings = Settings.load()  # fail here, clearly, rather than inside celery
    argv = [
        sys.executable, "-m", "celery", "-A", "scheduler.app", "beat",
        "--scheduler", "scheduler.beat:Scheduler", "--loglevel", args.loglevel,
    ]
    if settings.log_json:  # no banner: every line of the log is a JSON object
        argv.insert(3, "--quiet")
    return _celery(argv)


def _celery(argv: list[str]) -> int:
    """Run `python -m celery ...` (argv) in this process, as its command line would: an
    exec would start a second interpreter that imports bo_queue again (a second of CPU
    at every worker start). Celery exits the process when it stops."""
    from celery.__main__ import main as celery_main

    sys.argv = ["celery", *argv[3:]]  # what follows `python -m celery`
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `python -m` imports the handlers' modules from there
    celery_main()
    return 0
    return 0  # not reached


def _flower(args: argparse.Namespace) -> int:
    """Become `celery -A workers.app flower` on the workers' broker and namespace (exec)."""
    settings = Settings.load()  # fail here, clearly, rather than inside celery
    port = settings.flower_port if args.port is None else args.port
    address = settings.flower_address if args.address is None else args.address
    env = dict(os.environ)
    if settings.flower_user is not None and settings.flower_password is not None:
        # Flower reads FLOWER_* variables as its options: the credentials stay out of
        # the command line (and so out of `ps`), unlike --basic-auth=user:password.
        env["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{settings.flower_password}"
    elif not (env.get("FLOWER_BASIC_AUTH") or env.get("FLOWER_AUTH")):
        print(
            f"bo-queue: warning: Flower runs without authentication on {address}:{port}; "
            f"anyone who reaches it can see and control the workers (its HTTP API answers "
            f"401 to everyone). Set {ENV_PREFIX}FLOWER_USER and {ENV_PREFIX}FLOWER_PASSWORD.",
            file=sys.stderr,
        )
    argv = [
        sys.executable, "-m", "celery", "-A", "workers.app", "flower",
        f"--port={port}", f"--address={address}",
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


def _schedule(args: argparse.Namespace) -> int:
    """bo-queue schedule add|list|remove|pause|resume: against BO_QUEUE_REDIS_URL."""
    import json

    from bo_queue.client import BOQueue

    with BOQueue.from_env() as bq:
        schedules = bq.schedules
        if args.action == "add":
            info = schedules.add(
                args.name, args.handler, json.loads(args.payload), every=args.every,
                cron=args.cron, queue=args.queue, priority=args.priority,
                tags=args.tag, replace=args.replace,
            )
            print(info.model_dump_json())
        elif args.action == "list":
            for info in schedules.list():
                when = f"every {info.every_s:g} s" if info.every_s else f"cron {info.cron!r}"
                state = "" if info.enabled else " (paused)"
                print(f"{info.name}  {info.handler}  {when}  next {info.next_run_at}{state}")
        elif args.action == "remove":
            if not schedules.remove(args.name):
                raise BOQueueError(f"no schedule named {args.name!r}")
        else:
            try:
                info = getattr(schedules, args.action)(args.name)
            except KeyError as exc:
                raise BOQueueError(str(exc.args[0])) from None
            print(info.model_dump_json())
    return 0


def _workflow(args: argparse.Namespace) -> int:
    """bo-queue workflow run|status|list|pause|resume|cancel|set: against BO_QUEUE_REDIS_URL."""
    import json
    from pathlib import Path

    from bo_queue.client import BOQueue

    with BOQueue.from_env() as bq:
        flows = bq.workflows
        if args.action == "run":
            definition = json.loads(Path(args.file).read_text())
            run = flows.run(definition, json.loads(args.inputs))
            print(run.id)
            if not args.wait:
                return 0
            run = flows.wait(run.id, timeout=args.timeout)
            print(f"{run.id} {run.status} {run.error or ''}".rstrip())
            return 0 if run.status == "SUCCEEDED" else 1
        if args.action == "list":
            for run in flows.list():
                print(f"{run.id}  {run.name}  {run.status}  {run.current or ''}".rstrip())
            return 0
        if args.action == "status":
            run = flows.status(args.workflow_id)
        elif args.action == "set":
            run = flows.set_vars(args.workflow_id, **json.loads(args.vars))
        else:
            run = getattr(flows, args.action)(args.workflow_id)
        print(f"{run.id}  {run.name}  {run.status}  {run.error or ''}".rstrip())
        for step in run.steps.values():
            line = f"  {step.name:<24} {step.state:<10} runs {step.runs}  {step.error or ''}"
            print(line.rstrip())
    return 0


def _task(args: argparse.Namespace) -> int:
    """bo-queue task info|tree|graph: against BO_QUEUE_REDIS_URL."""
    from bo_queue.client import BOQueue

    with BOQueue.from_env() as bq:
        if args.action == "info":
            print(bq.info(args.task_ids[0]).model_dump_json(indent=2))
        elif args.action == "tree":
            def show(tree: TaskTree, depth: int) -> None:
                task = tree.task
                print(f"{'  ' * depth}{task.id}  {task.handler}  {task.state}")
                for child in tree.children:
                    show(child, depth + 1)

            show(bq.tree(args.task_ids[0]), 0)
        else:
            graph = bq.graph(args.task_ids)
            if args.dot:
                print(graph.to_dot(), end="")
            else:
                for n, layer in enumerate(graph.layers()):
                    print(f"{n}: " + "  ".join(
                        f"{i} ({graph.nodes[i].handler}, {graph.nodes[i].state})" for i in layer))
    return 0


def _metrics(args: argparse.Namespace) -> int:
    """Serve Prometheus metrics on http://ADDRESS:PORT/metrics until interrupted."""
    from bo_queue.client import BOQueue
    from bo_queue.monitor.prometheus import serve

    with BOQueue.from_env() as bq:
        print(f"serving metrics on http://{args.address}:{args.port}/metrics", flush=True)
        serve(bq.monitor, args.port, args.address, window_s=args.window)
    return 0


def _status(args: argparse.Namespace) -> int:
    """A terminal dashboard: queues, workers, running studies; --watch N redraws it."""
    import time

    from bo_queue.client import BOQueue
    from bo_queue.monitor.status import render_status

    with BOQueue.from_env() as bq:
        while True:
            text = render_status(bq.monitor)
            if args.watch:
                print("\x1b[2J\x1b[H", end="")  # clear the terminal, cursor home
            print(text, flush=True)
            if not args.watch:
                return 0
            try:
                time.sleep(args.watch)
            except KeyboardInterrupt:
                return 0


def _health(args: argparse.Namespace) -> int:
    """Exit 0 when healthy, 1 when not (Redis, workers per queue, beat, queue ages)."""
    from bo_queue.client import BOQueue
    from bo_queue.monitor.health import check_health

    with BOQueue.from_env() as bq:
        report = check_health(
            bq.monitor, max_queue_age_s=args.max_queue_age, require_beat=not args.no_beat
        )
    print(report.render())
    return 0 if report.ok else 1


API_APP = "bo_queue.api.app:create_app"  # the app factory `bo-queue api` serves


def _api(args: argparse.Namespace) -> int:
    """Serve the HTTP API (uvicorn, on the API_APP factory) until interrupted."""
    import uvicorn

    Settings.load()  # fail here, clearly, rather than inside uvicorn
    uvicorn.run(API_APP, factory=True, host=args.address,
                port=args.port, log_level=args.log_level, proxy_headers=args.proxy_headers)
    return 0


def _api_key(args: argparse.Namespace) -> int:
    """bo-queue api-key create|list|revoke: keys in the Redis of BO_QUEUE_REDIS_URL."""
    from bo_queue.api.keys import ApiKeys
    from bo_queue.client import BOQueue

    with BOQueue.from_env() as bq, bq.broker_errors():
        keys = ApiKeys(bq.redis)
        if args.action == "create":
            print(keys.create(args.namespace, args.name))
            print("bo-queue: store this key now; it is not shown again", file=sys.stderr)
        elif args.action == "list":
            for entry in keys.list():
                print(f"{entry['id']}  {entry['namespace']}  {entry['name'] or '-'}  "
                      f"created {_when(entry['created_at'])}")
        elif not keys.revoke(args.key):
            raise BOQueueError(f"no API key matches {args.key!r}")
    return 0


def _webhook(args: argparse.Namespace) -> int:
    """bo-queue webhook add|list|remove|dead: durable webhooks (bq.monitor.webhooks)."""
    from bo_queue.client import BOQueue

    with BOQueue.from_env() as bq:
        hooks = bq.monitor.webhooks
        if args.action == "add":
            secret = None
            if args.secret_env:  # from the environment: not in `ps` or the shell history
                secret = os.environ.get(args.secret_env)
                if not secret:
                    raise BOQueueError(f"--secret-env: {args.secret_env} is not set")
            info = hooks.add(args.url, events=args.event or ("task", "study"),
                             states=args.state or None, secret=secret, retries=args.retries,
                             backoff_s=args.backoff, timeout_s=args.timeout)
            print(info.id)
        elif args.action == "list":
            for info in hooks.list():
                print(info.model_dump_json())
        elif args.action == "remove":
            hooks.remove(args.webhook_id)
        else:
            for letter in hooks.dead_letters(args.webhook_id, limit=args.limit):
                print(letter.model_dump_json())
    return 0


def _when(timestamp: float) -> str:

    return utc(timestamp).strftime("%Y-%m-%d %H:%M:%S UTC")


def _demo(args: argparse.Namespace) -> int:
    from bo_queue.demo.tour import main as demo_main

    return demo_main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bo-queue", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run a Celery worker for bo_queue handlers")
    worker.add_argument("-Q", "--queues", help="comma-separated queues (default: all configured)")
    worker.add_argument("-c", "--concurrency", type=int, help="worker processes (default: cores)")
    worker.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="a module declaring handlers (repeatable; adds to BO_QUEUE_IMPORTS)",
    )
    worker.add_argument("-n", "--hostname", help="worker name, e.g. w1@%%h")
    worker.add_argument("-l", "--loglevel", default="INFO")
    worker.add_argument("-P", "--pool", default="prefork", choices=["prefork", "solo", "threads"])
    worker.add_argument("--capabilities",
                        help="comma-separated capabilities, e.g. gpu (BO_QUEUE_CAPABILITIES)")
    worker.add_argument("--offers", help="resources it offers, e.g. cpu=4,memory_mb=8192,gpu=1 "
                        "(BO_QUEUE_OFFERS; default: its cores and memory)")
    worker.set_defaults(func=_worker)
    study = sub.add_parser("study", help="create, run and inspect optimization studies")
    actions = study.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a study from a JSON spec; prints its id")
    create.add_argument("--spec", required=True, help="JSON file: a StudySpec")
    create.add_argument("--run", action="store_true", help="start the closed loop at once")
    run = actions.add_parser("run", help="start (or resume) a study's closed loop")
    run.add_argument("study_id")
    run.add_argument("--wait", action="store_true", help="block until it completes or fails")
    run.add_argument("--timeout", type=float, default=3600)
    for name, text in (("status", "status and trials"), ("best", "the best trial, as JSON")):
        actions.add_parser(name, help=text).add_argument("study_id")
    export = actions.add_parser(
        "export", help="everything about a study, as JSON; or its trials as CSV"
    )
    export.add_argument("study_id")
    export.add_argument("--format", choices=["json", "csv"], default="json",
                        help="csv: one row per trial (params_*, values_*, sem_*)")
    export.add_argument("--out", help="write to this file instead of stdout")
    export.add_argument("--model", action="store_true", help="include the Ax snapshot")
    study.set_defaults(func=_study)
    beat = sub.add_parser("beat", help="run celery beat with schedules kept in Redis")
    beat.add_argument("-l", "--loglevel", default="INFO")
    beat.set_defaults(func=_beat)
    flower = sub.add_parser(
        "flower", help="run Flower on the workers' broker and namespace (BO_QUEUE_FLOWER_*)"
    )
    flower.add_argument("--port", type=int, help="default: BO_QUEUE_FLOWER_PORT (5555)")
    flower.add_argument("--address", help="default: BO_QUEUE_FLOWER_ADDRESS (0.0.0.0)")
    flower.set_defaults(func=_flower)
    schedule = sub.add_parser("schedule", help="add, list, remove, pause, resume schedules")
    verbs = schedule.add_subparsers(dest="action", required=True)
    add = verbs.add_parser("add", help="add (or with --replace, change) a schedule")
    add.add_argument("name")
    add.add_argument("handler")
    add.add_argument("--payload", default="{}", help="the payload, as JSON")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=float, help="seconds between runs")
    when.add_argument("--cron", help='a cron expression, e.g. "0 3 * * *" (UTC)')
    add.add_argument("--queue")
    add.add_argument("--priority", default="normal")
    add.add_argument("--tag", action="append", default=[])
    add.add_argument("--replace", action="store_true")
    verbs.add_parser("list", help="every schedule, with its next run")
    for verb in ("remove", "pause", "resume"):
        verbs.add_parser(verb).add_argument("name")
    schedule.set_defaults(func=_schedule)
    flow = sub.add_parser("workflow", help="run, inspect, pause, resume, cancel workflows")
    flow_verbs = flow.add_subparsers(dest="action", required=True)
    start = flow_verbs.add_parser("run", help="start a run of a JSON definition; prints its id")
    start.add_argument("file", help="JSON file: a WorkflowSpec (Workflow(...).spec() dumped)")
    start.add_argument("--inputs", default="{}", help="the run's inputs, as JSON")
    start.add_argument("--wait", action="store_true", help="block until it ends")
    start.add_argument("--timeout", type=float, default=3600)
    flow_verbs.add_parser("list", help="the newest runs")
    for verb in ("status", "pause", "resume", "cancel"):
        flow_verbs.add_parser(verb).add_argument("workflow_id")
    set_vars = flow_verbs.add_parser("set", help="set vars.* of a run (what waits wait for)")
    set_vars.add_argument("workflow_id")
    set_vars.add_argument("vars", help='JSON object, e.g. \'{"approved": true}\'')
    flow.set_defaults(func=_workflow)
    task = sub.add_parser("task", help="a task's record, subtask tree or dependency graph")
    task_verbs = task.add_subparsers(dest="action", required=True)
    for verb, text in (("info", "the task record, as JSON"), ("tree", "the task and its subtasks")):
        task_verbs.add_parser(verb, help=text).add_argument("task_ids", nargs=1)
    graph = task_verbs.add_parser("graph", help="dependencies around tasks, in layers or DOT")
    graph.add_argument("task_ids", nargs="+")
    graph.add_argument("--dot", action="store_true", help="Graphviz DOT instead of layers")
    task.set_defaults(func=_task)
    metrics = sub.add_parser("metrics", help="serve Prometheus metrics (/metrics)")
    metrics.add_argument("--port", type=int, default=9808)
    metrics.add_argument("--address", default="0.0.0.0")
    metrics.add_argument("--window", type=float, default=300, help="seconds the rates cover")
    metrics.set_defaults(func=_metrics)
    status = sub.add_parser("status", help="queues, workers and running studies, at a glance")
    status.add_argument("--watch", type=float, metavar="SECONDS", help="redraw every SECONDS")
    status.set_defaults(func=_status)
    health = sub.add_parser("health", help="exit 0 if healthy, 1 if not")
    health.add_argument("--max-queue-age", type=float, default=300.0,
                        help="seconds the oldest queued task may wait")
    health.add_argument("--no-beat", action="store_true", help="do not require celery beat")
    health.set_defaults(func=_health)
    api = sub.add_parser("api", help="serve the HTTP API (OpenAPI docs on /docs)")
    api.add_argument("--port", type=int, default=8000, help="default: 8000")
    api.add_argument("--address", default="0.0.0.0", help="the address to bind (0.0.0.0)")
    api.add_argument("--log-level", default="info",
                     choices=["critical", "error", "warning", "info", "debug"])
    api.add_argument("--proxy-headers", action="store_true",
                     help="trust X-Forwarded-* from a reverse proxy")
    api.set_defaults(func=_api)
    api_key = sub.add_parser("api-key", help="create, list and revoke HTTP API keys")
    key_verbs = api_key.add_subparsers(dest="action", required=True)
    create_key = key_verbs.add_parser("create", help="a new key for NAMESPACE, printed once")
    create_key.add_argument("namespace")
    create_key.add_argument("--name", default="", help="a label, e.g. the producer's name")
    key_verbs.add_parser("list", help="every key's id, namespace and name (never the key)")
    key_verbs.add_parser("revoke", help="revoke a key, by the key or its id").add_argument(
        "key", metavar="ID_OR_KEY")
    api_key.set_defaults(func=_api_key)
    webhook = sub.add_parser("webhook", help="add, list and remove webhooks; dead letters")
    hook_verbs = webhook.add_subparsers(dest="action", required=True)
    add_hook = hook_verbs.add_parser("add", help="a webhook the workers deliver; prints its id")
    add_hook.add_argument("url")
    add_hook.add_argument("--event", action="append", choices=("task", "study"),
                          help="event kind (repeatable; default: both)")
    add_hook.add_argument("--state", action="append", help="only these states (repeatable)")
    add_hook.add_argument("--secret-env", metavar="VAR",
                          help="sign with the secret in this environment variable")
    add_hook.add_argument("--retries", type=int, default=5)
    add_hook.add_argument("--backoff", type=float, default=1.0, help="seconds, doubling")
    add_hook.add_argument("--timeout", type=float, default=5.0, help="seconds per attempt")
    hook_verbs.add_parser("list", help="every webhook, as JSON (secrets masked)")
    hook_verbs.add_parser("remove", help="remove a webhook").add_argument("webhook_id")
    dead = hook_verbs.add_parser("dead", help="the events a webhook gave up on, newest first")
    dead.add_argument("webhook_id")
    dead.add_argument("--limit", type=int, default=100)
    webhook.set_defaults(func=_webhook)
    demo = sub.add_parser("demo", help="start Redis and two workers locally, and run a batch")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BOQueueError as exc:
        print(f"bo-queue: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
