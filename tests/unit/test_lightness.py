"""Producers stay light: importing bo_queue and building a BOQueue pulls in no torch or Ax,
nor SQLAlchemy or pandas (SQLStorage and dataframe() import them when used)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("torch", "ax", "botorch", "sqlalchemy", "alembic", "pandas")

PROGRAM = f"""
import json, sys
import bo_queue
bq = bo_queue.BOQueue(redis_url="redis://127.0.0.1:1/0", namespace="lightness")
bq.close()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
print(json.dumps({{"heavy": heavy, "bo_queue": "bo_queue.client" in sys.modules}}))
"""


def test_import_and_construct_stay_light() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BO_QUEUE_")}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["bo_queue"] is True  # the program really imported the library
    assert report["heavy"] == [], f"heavy modules imported: {report['heavy']}"
