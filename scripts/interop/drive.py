"""Drives a live imgclass server with the client that openapi-python-client generated from the
server's own /api/openapi.json (scripts/interop.sh generates it and starts the server).

    python3 drive.py BASE_URL CLIENT_PARENT_DIR FIXTURES_DIR TOKEN

Every call goes through the generated functions and models, with their defaults: what a user of
the generated client would write. Any failure raises (the script exits non-zero).
"""

import csv
import io
import json
import sys

base, client_dir, fixtures, token = sys.argv[1:5]
sys.path.insert(0, client_dir)

from client import AuthenticatedClient, Client  # noqa: E402
from client.api.jobs import (  # noqa: E402
    cancel_job,
    cancel_queued_jobs,
    create_jobs,
    delete_finished_jobs,
    export_jobs,
    get_job,
    get_job_image,
    list_jobs,
    retry_failed_jobs,
    retry_job,
)
from client.api.service import health, ready, stats  # noqa: E402
from client.models import (  # noqa: E402
    DeleteFinishedJobsStatus,
    ErrorBody,
    ExportJobsFormat,
    JobStatus,
    JobsCreated,
    SubmitForm,
    WebhookPayload,
)
from client.types import File  # noqa: E402


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what)


def read(name):
    with open(f"{fixtures}/{name}", "rb") as f:
        return f.read()


def error_code(resp):
    body = resp.parsed
    assert isinstance(body, ErrorBody), (resp.status_code, resp.content[:200])
    return body.error.code.value


api = AuthenticatedClient(base_url=base, token=token, timeout=60.0, raise_on_unexpected_status=True)
anyone = Client(base_url=base, timeout=10.0, raise_on_unexpected_status=True)

# The public routes need no token (`security: []`); the guarded ones do.
check(health.sync_detailed(client=anyone).status_code == 200, "GET /healthz without a token")
check(ready.sync_detailed(client=anyone).status_code in (200, 503), "GET /readyz without a token")
check(
    error_code(stats.sync_detailed(client=anyone)) == "unauthorized",
    "GET /api/stats without a token is 401 unauthorized",
)

coffee, rocket = read("coffee.png"), read("rocket.jpg")

# Submit with every default of the generated form (it sends cache=True, priority=0), and wait.
form = SubmitForm(file=[File(payload=io.BytesIO(coffee), file_name="coffee.png", mime_type="image/png")])
resp = create_jobs.sync_detailed(client=api, body=form, prefer="wait=30")
check(resp.status_code == 202 and isinstance(resp.parsed, JobsCreated), "submit with the form's defaults")
job = resp.parsed.jobs[0]
if job.status != JobStatus.SUCCEEDED:
    job = get_job.sync(client=api, id=job.id, prefer="wait=30")
check(job.status == JobStatus.SUCCEEDED, f"the job succeeded ({job.status})")
check(job.result is not None and len(job.result.predictions) > 0, "the job has predictions")
first = job

# The same image again, defaults again: the result cache answers.
form = SubmitForm(file=[File(payload=io.BytesIO(coffee), file_name="coffee-again.png", mime_type="image/png")])
again = create_jobs.sync(client=api, body=form).jobs[0]
check(again.cached and again.status == JobStatus.SUCCEEDED, "the cache answers a known image")

# The other fields as a generated client writes them: cache=False ("False"), a priority, and a
# raw image body with the fields in the query. The server starts one job per 10 minutes
# (--rate-limit), so these stay queued.
form = SubmitForm(
    file=[File(payload=io.BytesIO(coffee), file_name="fresh.png", mime_type="image/png")],
    cache=False,
    priority=5,
)
fresh = create_jobs.sync(client=api, body=form).jobs[0]
check(not fresh.cached and fresh.status == JobStatus.QUEUED and fresh.priority == 5, "cache=False, priority=5")
raw = create_jobs.sync(
    client=api,
    body=File(payload=io.BytesIO(rocket), file_name="rocket.jpg", mime_type="image/jpeg"),
    filename="rocket.jpg",
    cache=False,
    priority=-3,
)
raw = raw.jobs[0]
check(raw.file_name == "rocket.jpg" and raw.priority == -3, "a raw image body with query fields")

# The list, with filters.
page = list_jobs.sync(client=api, status=JobStatus.QUEUED, q="fresh", limit=10)
check(page.total == 1 and page.jobs[0].id == fresh.id, "list: status=queued&q=fresh")
page = list_jobs.sync(client=api, label=first.result.predictions[0].label)
check(page.total >= 1, "list: label")
page = list_jobs.sync(client=api, status=JobStatus.SUCCEEDED, since=first.created_at)
check(page.total == 2, "list: status=succeeded&since")

# Cancel and retry.
canceled = cancel_job.sync(client=api, id=fresh.id)
check(canceled.status == JobStatus.CANCELED, "cancel a queued job")
retried = retry_job.sync(client=api, id=fresh.id)
check(retried.status == JobStatus.QUEUED, "retry a canceled job")
bulk = cancel_queued_jobs.sync(client=api, q="fresh")
check(bulk.count == 1, "cancel-queued with a filter")
resp = retry_failed_jobs.sync_detailed(client=api)
check(resp.status_code == 200 and resp.parsed.count == 0, "retry-failed (none failed)")

# Bad filter values are refused the same way everywhere (a raw query: the generated client's
# types would not let them through).
for route, method in [
    ("/api/jobs", "GET"),
    ("/api/jobs/export", "GET"),
    ("/api/jobs/cancel-queued", "POST"),
    ("/api/jobs/delete-finished", "POST"),
    ("/api/jobs/retry-failed", "POST"),
    ("/api/stats", "GET"),
]:
    r = api.get_httpx_client().request(method, route, params={"status": "bogus"})
    check(
        r.status_code == 400 and r.json()["error"]["code"] == "invalid_status",
        f"{method} {route}?status=bogus is 400 invalid_status",
    )

# The image, as uploaded.
resp = get_job_image.sync_detailed(client=api, id=first.id)
check(resp.status_code == 200 and resp.content == coffee, "the job's image, byte for byte")
check(resp.headers["content-type"] == "image/png", "the image's content type")

# The export, as CSV and JSON.
resp = export_jobs.sync_detailed(client=api, status=JobStatus.SUCCEEDED)
rows = list(csv.DictReader(io.StringIO(resp.content.decode())))
check(resp.status_code == 200 and len(rows) == 2, "export: CSV of the succeeded jobs")
resp = export_jobs.sync_detailed(client=api, format_=ExportJobsFormat.JSON, q="rocket")
exported = json.loads(resp.content)
check(len(exported) == 1 and exported[0]["id"] == str(raw.id), "export: JSON with a filter")

# A webhook call's body as the document describes it reads into the generated model.
payload = WebhookPayload.from_dict(
    {"type": "job.succeeded", "timestamp": first.updated_at.isoformat(), "data": first.to_dict()}
)
check(payload.data.id == first.id, "the webhook payload model reads a job")

# Finished jobs, deleted by status.
deleted = delete_finished_jobs.sync(client=api, status=DeleteFinishedJobsStatus.CANCELED)
check(deleted.count == 1, "delete-finished status=canceled")
print("interop: the generated Python client drove every flow")
