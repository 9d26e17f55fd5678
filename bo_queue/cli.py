"""The `bo-queue` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bo_queue.config import ENV_PREFIX, Settings
from bo_queue.errors import BOQueueError


def _worker(args: argparse.Namespace) -> int:
    """Become `celery -A workers.app worker` with bo_queue's settings (exec, same pid)."""
    env = dict(os.environ)
    imports = [m for m in env.get(f"{ENV_PREFIX}IMPORTS", "").split(",") if m.strip()]
    imports += [m for group in args.imports for m in group.split(",") if m.strip()]
    if imports:
        env[f"{ENV_PREFIX}IMPORTS"] = ",".join(dict.fromkeys(imports))
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
    ]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


def _demo(args: argparse.Namespace) -> int:
    from bo_queue.demo import main as demo_main

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
    worker.set_defaults(func=_worker)
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
