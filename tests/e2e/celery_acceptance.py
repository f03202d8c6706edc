"""A Flask app's Celery side during a migration, against taskbeat on the AWS emulator.

Uses Celery's own API only: send_task over the SQS broker (kombu's SQS transport), AsyncResult
over the DynamoDB result backend. taskbeat consumes the queue and writes the results. Run by
tests/e2e/celery.rs, which starts the emulator's resources and taskbeat's worker and passes:

  CELERY_ACCEPTANCE_ENDPOINT   the emulator, http://127.0.0.1:PORT
  CELERY_ACCEPTANCE_PREFIX     kombu's queue_name_prefix
  CELERY_ACCEPTANCE_TABLE      the result table
  CELERY_ACCEPTANCE_TTL        the result backend's ttl_seconds

Prints one JSON line per check (`{"check": ..., ...}`) for the Rust test to compare with the task
records; exits non-zero when a check fails.
"""

import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

from celery import Celery
from celery.exceptions import TaskRevokedError

TASK = "app.schedules.user_task.process_users"

endpoint = urlparse(os.environ["CELERY_ACCEPTANCE_ENDPOINT"])
prefix = os.environ["CELERY_ACCEPTANCE_PREFIX"]
table = os.environ["CELERY_ACCEPTANCE_TABLE"]
ttl = os.environ["CELERY_ACCEPTANCE_TTL"]
host = f"{endpoint.hostname}:{endpoint.port}"

# The settings the Flask app changes during the move: broker and backend.
app = Celery(
    "flask_app",
    broker=f"sqs://test:test@{host}",
    backend=f"dynamodb://test:test@{host}/{table}?ttl_seconds={ttl}",
)
app.conf.update(
    broker_transport_options={"region": "us-east-1", "queue_name_prefix": prefix, "wait_time_seconds": 1},
    task_routes={"app.schedules.user_task.*": {"queue": "default"}},
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)


def report(check, **fields):
    print(json.dumps({"check": check, **fields}), flush=True)


def fail(message):
    print(f"FAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def wait_for(result, want, timeout=30.0):
    """Polls the backend (as a Flask view would) until the state is in `want`."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        state = result.state
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in want:
            return state, seen
        time.sleep(0.05)
    fail(f"task {result.id} never reached {want}; states seen: {seen}")


# 1. send_task; PROGRESS with its meta while it runs; .get() returns the summary.
users = ["u1", "u2", "u3", "u4", "missing-7"]
running = app.send_task(TASK, args=[users, "recompute"])
state, seen = wait_for(running, {"PROGRESS", "SUCCESS", "FAILURE"})
if state != "PROGRESS":
    fail(f"no PROGRESS seen before {state}: {seen}")
meta = running.info
if not (isinstance(meta, dict) and meta.get("status", "").startswith("processing users: ")
        and isinstance(meta.get("progress"), int)):
    fail(f"PROGRESS meta is {meta!r}")
summary = running.get(timeout=60)
if running.state != "SUCCESS":
    fail(f"state after get() is {running.state}")
report("progress", id=running.id, meta=meta, summary=summary)

# 2. A failing task: .get() raises with the task's error type name and message.
failing = app.send_task(TASK, args=[["u1"], "explode"])
try:
    failing.get(timeout=30)
    fail("get() of a failing task returned")
except Exception as error:  # noqa: BLE001 - the type is the task's own error kind
    if failing.state != "FAILURE":
        fail(f"state of the failing task is {failing.state}")
    report("failure", id=failing.id, type=type(error).__name__, message=str(error))

# 3. countdown: it runs after it.
countdown = 2
sent = datetime.now(timezone.utc)
later = app.send_task(TASK, args=[["u5"], "activate"], countdown=countdown)
later_summary = later.get(timeout=60)
done = later.date_done
if done is None or done < sent + timedelta(seconds=countdown):
    fail(f"countdown task done at {done}, sent at {sent} with countdown {countdown} s")
report("countdown", id=later.id, sent=sent.isoformat(), date_done=done.isoformat(), summary=later_summary)

# 4. expires in the past: REVOKED, and get() says so.
expired = app.send_task(TASK, args=[["u6"], "recompute"], expires=datetime.now(timezone.utc) - timedelta(minutes=1))
try:
    expired.get(timeout=30)
    fail("get() of an expired task returned")
except TaskRevokedError as error:
    if expired.state != "REVOKED":
        fail(f"state of the expired task is {expired.state}")
    report("expired", id=expired.id, message=str(error))

# 5. A producer still on pickle: refused with the setting to change, and AsyncResult says so.
pickled = app.send_task(TASK, args=[["u7"], "recompute"], serializer="pickle")
try:
    pickled.get(timeout=30)
    fail("get() of a pickled task returned")
except Exception as error:  # noqa: BLE001
    if pickled.state != "FAILURE":
        fail(f"state of the pickled task is {pickled.state}")
    report("pickle", id=pickled.id, type=type(error).__name__, message=str(error))
