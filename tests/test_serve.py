"""The web server's API (FastAPI test client): jobs, viewer volumes, downloads, validation, restarts."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from aldm.errors import AldmError
from aldm.serve.app import create_app
from aldm.serve.volumes import inside

GOOD = {"n": 3, "guidance": 2.0, "sampler": "dpmpp2m", "steps": 3, "seed": 5}


def wait_for(client, job_id, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


@pytest.fixture(scope="module")
def served(tiny_runs, tmp_path_factory):
    """A server over the tiny source LDM and few-shot model, with one finished 3-sample job."""
    out = tmp_path_factory.mktemp("serve")
    app = create_app([tiny_runs["ldm"], tiny_runs["fewshot"]], out=str(out))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        job = client.post("/api/jobs", json={"model": "fewshot", **GOOD})
        assert job.status_code == 202, job.text
        done = wait_for(client, job.json()["id"])
        yield client, done, out


def test_models_and_page(served):
    client, _, _ = served
    models = {m["id"]: m for m in client.get("/api/models").json()}
    assert models["ldm"]["domain"] == "source" and models["fewshot"]["domain"] == "target"
    assert models["fewshot"]["k"] == 2 and models["fewshot"]["image_size"] == 32
    assert "path" not in models["ldm"]  # no server paths leak to the page
    page = client.get("/")
    assert page.status_code == 200 and 'id="generate"' in page.text
    assert client.get("/openapi.json").json()["paths"]["/api/jobs"]["post"]


def test_job_follows_appendix_a_and_serves_volumes(served, tiny_runs):
    client, job, _ = served
    assert job["status"] == "done", job["error"]
    assert job["progress"]["done"] == 3 and job["elapsed_s"] > 0
    split = json.load(open(os.path.join(tiny_runs["fewshot"], "split.json")))
    samples = job["samples"]
    assert [s["index"] for s in samples] == [0, 1, 2]
    # the first samples reuse held-out target subjects' own masks; later ones are moved into other brains
    assert [s["ground_truth_mask"] for s in samples] == [True, True, False]
    assert [s["mask_subject"] for s in samples[:2]] == split["test"]
    assert samples[2]["mask_source"].startswith("relocated:") and samples[2]["context_subject"] in split["test"]
    assert not set(s["context_subject"] for s in samples) & set(split["k_shot"])

    base = f"/api/jobs/{job['id']}/samples/{samples[0]['sample']}"
    syn = client.get(f"{base}/volume/flair")
    assert syn.status_code == 200 and syn.headers["x-volume-shape"] == "32,32,32"
    vol = np.frombuffer(syn.content, np.uint8).reshape(32, 32, 32)
    assert vol.std() > 1  # an image, not a constant
    mask = np.frombuffer(client.get(f"{base}/volume/mask").content, np.uint8)
    ref = client.get(f"{base}/volume/mask?source=reference")
    assert ref.headers["x-subject"] == samples[0]["mask_subject"]
    labels = np.frombuffer(ref.content, np.uint8)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    assert np.array_equal(mask > 0, labels > 0)  # the ground-truth mask is the real subject's tumour
    assert samples[0]["labels"] and np.array_equal(mask, labels)  # the sample's own label map, coloured by region
    real = np.frombuffer(client.get(f"{base}/volume/t1?source=reference").content, np.uint8)
    assert real.std() > 1 and not np.array_equal(real, np.frombuffer(client.get(f"{base}/volume/t1").content, np.uint8))


def test_downloads_are_the_written_niftis(served):
    client, job, out = served
    sample = job["samples"][1]["sample"]
    base = f"/api/jobs/{job['id']}/samples/{sample}"
    resp = client.get(f"{base}/files/native/flair.nii.gz")
    assert resp.status_code == 200
    on_disk = os.path.join(out, "jobs", job["id"], "samples", sample, "native", "flair.nii.gz")
    assert resp.content == open(on_disk, "rb").read()
    zipped = zipfile.ZipFile(io.BytesIO(client.get(f"{base}/download.zip").content))
    names = set(zipped.namelist())
    for space in ("model", "native"):
        for ch in ("t1", "t2", "flair", "mask", "seg"):
            assert f"{sample}/{space}/{ch}.nii.gz" in names
    assert client.get(f"{base}/files/model/seg.nii.gz").status_code == 200
    img = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(zipped.read(f"{sample}/native/mask.nii.gz")))
    assert img.shape == (240, 240, 155) and np.asarray(img.dataobj).max() == 1


@pytest.mark.parametrize("body, status, words", [
    ({"model": "fewshot", "n": 0}, 422, "n"),
    ({"model": "fewshot", "n": 65}, 422, "n"),
    ({"model": "fewshot", "steps": -3}, 422, "steps"),
    ({"model": "fewshot", "steps": 101}, 422, "at most T = 100"),
    ({"model": "fewshot", "sampler": "ddpm", "steps": 20}, 422, "all T = 100"),
    ({"model": "fewshot", "sampler": "euler"}, 422, "sampler"),
    ({"model": "fewshot", "guidance": -1}, 422, "guidance"),
    ({"model": "fewshot", "seed": "abc"}, 422, "seed"),
    ({"model": "fewshot", "extra": 1}, 422, "extra"),
    ({"model": "fewshot", "n": "1"}, 422, "n"),  # numbers only: no string or boolean coerced
    ({"model": "fewshot", "n": True}, 422, "n"),
    ({"model": "fewshot", "n": 1.5}, 422, "n"),
    ({"model": "fewshot", "guidance": "3"}, 422, "guidance"),
    ({"model": "fewshot", "guidance": False}, 422, "guidance"),
    ({"model": "fewshot", "steps": "20"}, 422, "steps"),
    ({"model": "no-such-model"}, 404, "unknown model"),
    ({}, 422, "model"),
])
def test_bad_parameters_get_4xx_with_a_message(served, body, status, words):
    client, _, _ = served
    resp = client.post("/api/jobs", json=body)
    assert resp.status_code == status
    assert words in json.dumps(resp.json())


def test_an_edit_job_edits_a_held_out_patient_and_shows_its_input(served, tiny_runs):
    client, _, _ = served
    split = json.load(open(os.path.join(tiny_runs["fewshot"], "split.json")))
    assert client.get("/api/models/fewshot/subjects").json() == split["test"]  # never the few-shot patients
    patient, donor = split["test"][:2]
    body = {"model": "fewshot", **GOOD, "n": 1, "edit": {"subject": patient, "operation": "transplant",
                                                        "donor": donor}}
    job = wait_for(client, client.post("/api/jobs", json=body).json()["id"])
    assert job["status"] == "done", job["error"]
    assert job["edit"]["operation"] == "transplant"
    (sample,) = job["samples"]
    assert sample["edit"] and sample["context_subject"] == patient and sample["mask_source"].startswith("edit:")
    base = f"/api/jobs/{job['id']}/samples/{sample['sample']}"
    edited = np.frombuffer(client.get(f"{base}/volume/t1").content, np.uint8)
    ref = client.get(f"{base}/volume/t1?source=reference")
    assert ref.headers["x-subject"] == patient
    real = np.frombuffer(ref.content, np.uint8)
    region = np.asarray(nib.load(client.app.state.queue.samples_dir(job["id"]) + f"/{sample['sample']}/model/"
                                 "region.nii.gz").dataobj).reshape(-1) > 0
    assert np.array_equal(edited[~region], real[~region]) and not np.array_equal(edited[region], real[region])


@pytest.mark.parametrize("edit, words", [
    ({"subject": "nobody", "operation": "remove"}, "not one of the patients"),
    ({"subject": "{k_shot}", "operation": "remove"}, "not one of the patients"),  # a few-shot patient is not offered
    ({"subject": "{test}", "operation": "grow", "factor": 0.5}, "--grow takes a factor above 1"),
    ({"subject": "{test}", "operation": "move", "shift_mm": [0, 0]}, "shift_mm"),
    ({"subject": "{test}", "operation": "move", "shift_mm": [0.1, 0, 0]}, "nothing to edit"),
    ({"subject": "{test}", "operation": "transplant"}, "needs a donor"),
    ({"subject": "{test}", "operation": "explode"}, "operation"),
    ({"subject": "../etc", "operation": "remove"}, "subject"),
])
def test_bad_edits_are_refused_when_submitted(served, tiny_runs, edit, words):
    client, _, _ = served
    split = json.load(open(os.path.join(tiny_runs["fewshot"], "split.json")))
    edit = {k: (v.format(test=split["test"][0], k_shot=split["k_shot"][0]) if isinstance(v, str) else v)
            for k, v in edit.items()}
    resp = client.post("/api/jobs", json={"model": "fewshot", **GOOD, "edit": edit})
    assert resp.status_code == 422 and words in json.dumps(resp.json()), resp.text


def test_errors_do_not_echo_the_request(served):
    client, _, _ = served
    resp = client.post("/api/jobs", json={"model": "<script>alert(1)</script>"})
    assert resp.status_code == 404 and "script" not in resp.text


def test_a_chunked_body_over_the_limit_is_refused_unread(served):
    client, _, _ = served

    def chunks(total, size=8192):
        yield b'{"model": "fewshot", "pad": "'
        for _ in range(total // size):
            yield b"x" * size
        yield b'"}'

    for total in (4 * 1024**2, 1900 * 1024):  # no Content-Length: the limit holds on the stream
        resp = client.post("/api/jobs", content=chunks(total), headers={"content-type": "application/json"})
        assert resp.status_code == 413, (total, resp.status_code, resp.text[:200])
    small = client.post("/api/jobs", content=iter([b'{"model": "fewshot", ', b'"n": 0}']),
                        headers={"content-type": "application/json"})
    assert small.status_code == 422  # a small chunked body is read and validated as usual


def test_security_headers_on_every_response(served):
    client, job, _ = served
    sample = job["samples"][0]["sample"]
    for path in ("/", "/api/health", "/api/models", f"/api/jobs/{job['id']}",
                 f"/api/jobs/{job['id']}/samples/{sample}/volume/t1", "/api/jobs/000000000000", "/nothing"):
        resp = client.get(path)
        assert resp.headers["x-content-type-options"] == "nosniff", path
        assert "frame-ancestors 'none'" in resp.headers["content-security-policy"], path
        assert resp.headers["x-frame-options"] == "DENY", path
    page = client.get("/").headers["content-security-policy"]
    assert "script-src 'sha256-" in page and "connect-src 'self'" in page and "unsafe-eval" not in page


def test_only_the_bound_address_and_allowed_hosts_are_served(tiny_runs, tmp_path):
    app = create_app([tiny_runs["fewshot"]], out=str(tmp_path), start_worker=False, allowed_hosts=("aldm.lab",))
    hosts = (("http://127.0.0.1:8000", 200), ("http://localhost", 200), ("http://[::1]:8000", 200),
             ("http://aldm.lab", 200), ("http://evil.example", 400), ("http://127.0.0.1.evil.example", 400))
    for base, status in hosts:
        with TestClient(app, base_url=base) as client:
            resp = client.get("/api/health")
            assert resp.status_code == status, (base, resp.status_code)
            if status == 400:
                assert "evil" not in resp.text and resp.headers["x-content-type-options"] == "nosniff"


def test_nan_guidance_and_oversized_bodies_are_refused(served):
    client, _, _ = served
    resp = client.post("/api/jobs", content=b'{"model": "fewshot", "guidance": NaN}',
                       headers={"content-type": "application/json"})
    assert resp.status_code == 422
    resp = client.post("/api/jobs", content=b"{" + b" " * (70 * 1024) + b"}",
                       headers={"content-type": "application/json"})
    assert resp.status_code == 413


@pytest.mark.parametrize("url", [
    "/api/jobs/../../etc/passwd",
    "/api/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/jobs/{job}/samples/..%2f..%2fjob.json/volume/t1",
    "/api/jobs/{job}/samples/sample-0000_..%2f..%2f..%2fjob.json/volume/t1",
    "/api/jobs/{job}/samples/{sample}/files/model/..%2f..%2fsample.json",
    "/api/jobs/{job}/samples/{sample}/files/..%2fnative/t1.nii.gz",
    "/api/jobs/{job}/samples/{sample}/volume/..%2fsample.json",
    "/api/jobs/aaaaaaaaaaaa/samples/{sample}/volume/t1",
])
def test_no_path_leaves_the_output_folder(served, url):
    client, job, _ = served
    url = url.format(job=job["id"], sample=job["samples"][0]["sample"])
    resp = client.get(url)
    assert resp.status_code in (404, 422), (url, resp.status_code)
    assert b"root:" not in resp.content and b'"status"' not in resp.content


def test_inside_refuses_symlinks_that_escape(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to(tmp_path)
    with pytest.raises(AldmError, match="outside"):
        inside(str(root), "escape", "x")
    assert inside(str(root), "a", "b").startswith(str(root.resolve()))


def test_queue_is_bounded_and_survives_a_restart(tiny_runs, tmp_path):
    app = create_app([tiny_runs["fewshot"]], out=str(tmp_path), max_pending=1, start_worker=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        first = client.post("/api/jobs", json={"model": "fewshot", **GOOD, "n": 1})
        assert first.status_code == 202
        busy = client.post("/api/jobs", json={"model": "fewshot", **GOOD})
        assert busy.status_code == 429 and "busy" in busy.json()["detail"]
        assert busy.headers["retry-after"]
    job_id = first.json()["id"]
    assert json.load(open(tmp_path / "jobs" / job_id / "job.json"))["status"] == "queued"
    # a new server over the same folder picks the unfinished job up and finishes it
    app = create_app([tiny_runs["fewshot"]], out=str(tmp_path), max_pending=1)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        job = wait_for(client, job_id)
        assert job["status"] == "done" and job["resumed"] and len(job["samples"]) == 1
    # and a third start still lists it, finished, without running it again
    before = os.path.getmtime(tmp_path / "jobs" / job_id / "samples" / job["samples"][0]["sample"] / "sample.json")
    app = create_app([tiny_runs["fewshot"]], out=str(tmp_path))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        again = client.get(f"/api/jobs/{job_id}").json()
        assert again["status"] == "done" and len(again["samples"]) == 1
        assert [j["id"] for j in client.get("/api/jobs").json()] == [job_id]
    after = os.path.getmtime(tmp_path / "jobs" / job_id / "samples" / job["samples"][0]["sample"] / "sample.json")
    assert before == after


def _wait_running(client, job_id, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"]["step"] > 0:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never ran: {job}")


LONG = {**GOOD, "n": 8, "steps": 40}  # long enough to be caught running


def test_jobs_can_be_cancelled_queued_or_running(tiny_runs, tmp_path):
    app = create_app([tiny_runs["fewshot"]], out=str(tmp_path / "q"), start_worker=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        a, b = (client.post("/api/jobs", json={"model": "fewshot", **GOOD}).json()["id"] for _ in range(2))
        cancelled = client.post(f"/api/jobs/{a}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert client.get("/api/health").json()["pending_jobs"] == 1
        again = client.post(f"/api/jobs/{a}/cancel")
        assert again.status_code == 409 and "cancelled" in again.json()["detail"]
        assert client.post("/api/jobs/0123456789ab/cancel").status_code == 404
        assert client.get(f"/api/jobs/{b}").json()["status"] == "queued"
    app = create_app([tiny_runs["fewshot"]], out=str(tmp_path / "r"))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        job_id = client.post("/api/jobs", json={"model": "fewshot", **LONG}).json()["id"]
        _wait_running(client, job_id)
        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
        job = wait_for(client, job_id)
        assert job["status"] == "cancelled" and len(job["samples"]) < LONG["n"]
        assert not [n for n in os.listdir(tmp_path / "r" / "jobs" / job_id / "samples") if n.startswith(".tmp-")]
        # the server goes on: the next job runs to the end
        done = wait_for(client, client.post("/api/jobs", json={"model": "fewshot", **GOOD, "n": 1}).json()["id"])
        assert done["status"] == "done"


@pytest.mark.slow  # a server started, drained mid-job and started again (~25 s)
def test_shutdown_drains_the_running_job_and_the_next_start_resumes_it(tiny_runs, tmp_path):
    app = create_app([tiny_runs["fewshot"]], out=str(tmp_path))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        job_id = client.post("/api/jobs", json={"model": "fewshot", **LONG}).json()["id"]
        _wait_running(client, job_id)
        started = time.monotonic()
    assert time.monotonic() - started < 20  # stopped at the next denoising step, not at the job's end
    saved = json.load(open(tmp_path / "jobs" / job_id / "job.json"))
    assert saved["status"] == "queued" and saved["resumed"]
    app = create_app([tiny_runs["fewshot"]], out=str(tmp_path))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        job = wait_for(client, job_id, timeout=300)
        assert job["status"] == "done" and len(job["samples"]) == LONG["n"]


def test_one_server_per_output_folder(tiny_runs, tmp_path):
    import subprocess
    import sys

    from aldm.io.lock import FolderBusy

    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from aldm.serve.app import create_app\n"
        f"app = create_app([{tiny_runs['fewshot']!r}], out={str(tmp_path)!r}, start_worker=False)\n"
        "print('serving', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "serving"
        with pytest.raises(FolderBusy, match=f"PID {holder.pid}"):
            create_app([tiny_runs["fewshot"]], out=str(tmp_path))
    finally:
        holder.kill()
        holder.wait()


def test_a_failing_job_fails_alone(tiny_runs, tmp_path, prepared_cache):
    """A job whose masks cannot be made fails with its reason; the server keeps answering."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(prepared_cache, cache)
    app = create_app([tiny_runs["fewshot"]], out=str(tmp_path / "out"), data=[str(cache)])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for name in os.listdir(cache):
            if name.endswith(".npz"):
                (cache / name).write_bytes(b"not an npz")
        job = wait_for(client, client.post("/api/jobs", json={"model": "fewshot", **GOOD}).json()["id"])
        assert job["status"] == "failed" and "unreadable cache file" in job["error"]
        assert client.get("/api/health").json()["status"] == "ok"


def test_serve_refuses_runs_that_cannot_generate(tiny_runs, tmp_path):
    with pytest.raises(AldmError, match="vae run cannot generate"):
        create_app([tiny_runs["vae"]], out=str(tmp_path))
    with pytest.raises(AldmError, match="not a prepared cache|no manifest"):
        create_app([tiny_runs["ldm"]], out=str(tmp_path), data=[str(tmp_path)])
