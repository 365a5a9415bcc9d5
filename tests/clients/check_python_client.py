"""Drives a running Spool with the Python client generated from openapi.yaml.

`.ci/run clients` generates the client (openapi-python-client) into
target/clients/python and runs this script against the real binary:

    python3 tests/clients/check_python_client.py BASE_URL API_KEY

Each step is what an integrator does first; any surprise raises, and the
script exits non-zero. It reads fields as the generated models type them:
a field the service always sends must be present (never `Unset`).
"""

import sys
import time
import uuid

from spool_client import AuthenticatedClient
from spool_client.api.batches import batch_results, create_batch, get_batch
from spool_client.api.jobs import cancel_job, create_job, get_job, list_jobs
from spool_client.api.operations import openapi_yaml
from spool_client.api.queues import put_queue
from spool_client.models import (
    BatchSpec,
    BatchStatus,
    Job,
    JobPage,
    JobSpec,
    JobSpecMetadataType0,
    JobState,
    Problem,
    QueueSettings,
    ResultPage,
)
from spool_client.types import Unset


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


def sent(value, field):
    """A field the service always sends: present, perhaps null."""
    check(not isinstance(value, Unset), f"{field} is sent")
    return value


def main(base_url, api_key):
    client = AuthenticatedClient(base_url=base_url, token=api_key, timeout=30.0)
    run = uuid.uuid4().hex[:8]

    # The document itself, as a string.
    document = openapi_yaml.sync(client=client)
    check(isinstance(document, str) and document.startswith("openapi: 3.1"), "openapi.yaml reads as text")

    # Submit, then long-poll until it ends.
    spec = JobSpec(
        kind="sleep",
        payload={"ms": 100},
        metadata=JobSpecMetadataType0.from_dict({"run": run, "step": "submit"}),
    )
    answer = create_job.sync_detailed(client=client, body=spec)
    check(answer.status_code == 202, f"submit answers 202 (got {answer.status_code})")
    job = answer.parsed
    check(isinstance(job, Job), "submit returns a Job")
    check(sent(job.finished_at, "finished_at") is None, "a new job has not finished")
    check(sent(job.error, "error") is None, "a new job has no error")
    sent(job.position, "position")
    sent(job.batch_id, "batch_id")

    done = get_job.sync(client=client, id=str(job.id), wait=30)
    check(isinstance(done, Job) and done.status == JobState.SUCCEEDED, "long-poll returns the job succeeded")
    check(sent(done.finished_at, "finished_at") is not None, "a finished job has finished_at")
    check(done.error is None and done.errors == [], "a job that succeeded shows no error")

    # The list, filtered by a metadata label as the generated call sends it.
    page = list_jobs.sync(client=client, metadata=[f"run={run}"])
    check(isinstance(page, JobPage), "list_jobs returns a page")
    check([j.id for j in page.items] == [job.id], "the metadata filter finds exactly the job")

    # A batch, its results paged to the end.
    batch_spec = BatchSpec(jobs=[JobSpec(kind="noop", payload={"n": n}) for n in range(25)])
    answer = create_batch.sync_detailed(client=client, body=batch_spec)
    check(answer.status_code == 202, f"a batch is accepted (got {answer.status_code})")
    batch = answer.parsed
    finished = get_batch.sync(client=client, id=str(batch.id), wait=30)
    check(finished.status == BatchStatus.SUCCEEDED, f"the batch succeeded ({finished.status})")
    indexes, cursor, pages = [], None, 0
    while True:
        kwargs = {"limit": 10}
        if cursor is not None:
            kwargs["cursor"] = cursor
        results = batch_results.sync(client=client, id=str(batch.id), **kwargs)
        check(isinstance(results, ResultPage), "batch_results returns a page")
        pages += 1
        indexes += [result.index for result in results.items]
        cursor = sent(results.next_cursor, "next_cursor")
        if cursor is None:
            break
    check(sorted(indexes) == list(range(25)), "the results, paged to the end, hold every job once")
    check(pages == 3, f"25 results come in 3 pages of 10 (got {pages})")

    # Cancel a job that has not started.
    later = create_job.sync(client=client, body=JobSpec(kind="noop", delay_ms=600_000))
    answer = cancel_job.sync_detailed(client=client, id=str(later.id))
    check(answer.status_code == 200, f"cancelling a scheduled job answers 200 (got {answer.status_code})")
    check(answer.parsed.status == JobState.CANCELLED, "the job is cancelled")

    # A full queue: 429 with Retry-After and a problem with a code.
    queue = f"tiny-{run}"
    answer = put_queue.sync_detailed(client=client, name=queue, body=QueueSettings(capacity=1, paused=True))
    check(answer.status_code == 201, f"a queue is created (got {answer.status_code})")
    create_job.sync(client=client, body=JobSpec(kind="noop", queue=queue))
    answer = create_job.sync_detailed(client=client, body=JobSpec(kind="noop", queue=queue))
    check(answer.status_code == 429, f"a full queue answers 429 (got {answer.status_code})")
    retry_after = answer.headers.get("retry-after")
    check(retry_after is not None and int(retry_after) >= 1, f"with Retry-After ({retry_after})")
    check(isinstance(answer.parsed, Problem) and answer.parsed.code == "queue_full", "and the problem queue_full")

    # Invalid fields: every one reported at once, each with its pointer.
    answer = create_job.sync_detailed(client=client, body=JobSpec(kind="noop", priority=1000, max_attempts=0))
    check(answer.status_code == 422, f"an invalid job answers 422 (got {answer.status_code})")
    problem = answer.parsed
    check(isinstance(problem, Problem) and problem.code == "validation_failed", "with validation_failed")
    pointers = sorted(error.pointer for error in problem.errors)
    check(pointers == ["/max_attempts", "/priority"], f"naming both fields by pointer ({pointers})")

    # An unknown job: 404 with the one not-found wording.
    answer = get_job.sync_detailed(client=client, id=str(uuid.uuid4()))
    check(answer.status_code == 404 and answer.parsed.code == "not_found", "an unknown job is 404 not_found")
    print("the generated Python client works against the service")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    started = time.monotonic()
    main(sys.argv[1], sys.argv[2])
    print(f"done in {time.monotonic() - started:.1f}s")
