"""schemathesis against the server's own OpenAPI description: no 5xx, responses as documented.

Bounded in time: ``max_examples`` per operation (ALDM_FUZZ_EXAMPLES, default 40). The worker is not
started, so accepted jobs stay queued (the bounded queue then answers 429, which is documented).
The served job folder holds one finished sample, so the file endpoints see real names too.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.slow  # trains several stages or runs subprocesses; see pyproject.toml

EXAMPLES = int(os.environ.get("ALDM_FUZZ_EXAMPLES", "40"))
CALLS: dict[str, int] = {}


@pytest.fixture(scope="module")
def api_schema(tiny_runs, tmp_path_factory):
    from fastapi.testclient import TestClient

    from aldm.serve.app import create_app
    from aldm.serve.jobs import JobQueue

    out = tmp_path_factory.mktemp("fuzz")
    # one finished job, made by a running server, then served by one whose worker never starts
    app = create_app([tiny_runs["fewshot"]], out=str(out))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        job_id = client.post("/api/jobs", json={"model": "fewshot", "n": 1, "steps": 2}).json()["id"]
        queue: JobQueue = app.state.queue
        while queue.view(job_id)["status"] in ("queued", "running"):
            time.sleep(0.05)
    assert queue.view(job_id)["status"] == "done"
    # schemathesis's in-process client names the server "testserver"/"localhost": allowed like a proxy's name
    app = create_app([tiny_runs["fewshot"]], out=str(out), start_worker=False, allowed_hosts=("testserver",))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    shutil.rmtree(out, ignore_errors=True)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_never_errors_and_answers_as_documented(case):
    CALLS[case.operation.label] = CALLS.get(case.operation.label, 0) + 1
    response = case.call()
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
    case.validate_response(response)


def test_fuzz_ran_every_operation():
    assert len(CALLS) >= 7, CALLS
    total = sum(CALLS.values())
    print(f"\nschemathesis: {total} cases over {len(CALLS)} operations, no 5xx: {CALLS}")
