"""Generation jobs of the web server: a bounded queue, one worker thread, state kept on disk.

Layout under the server's output folder::

    OUT/jobs/<job id>/job.json      request, status, progress, error (rewritten atomically)
    OUT/jobs/<job id>/samples/      an ``aldm generate`` output folder (sample-NNNN_<mask>/...)

A job is ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``. At start-up every job
folder is read back: finished jobs are listed as they were, and jobs a stopped server left
``queued`` or ``running`` are queued again; generation resumes from the samples already on disk
(each sample is written to a temporary folder and renamed, so none is ever half there). At most
``max_pending`` jobs wait or run at once; :meth:`JobQueue.submit` refuses more with
:class:`QueueFull`, which the API answers with 429.

:meth:`JobQueue.cancel` removes a queued job at once and stops a running one at its next denoising
step (finished samples stay). :meth:`JobQueue.stop` drains: the running job stops at its next step
and is saved as ``queued``, so the next server start resumes it. One server per output folder
(:mod:`aldm.io.lock`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
import traceback
from collections import deque

from ..artifacts.samples import SampleSet
from ..conditions import SEG_FILE
from ..data.masks import MaskSource
from ..diffusion.settings import GenerationSettings
from ..errors import AldmError
from ..generate import GenerationRequest, GenerationRuntime, generate
from ..io.atomic import atomic_write_text
from ..io.lock import exclusive_writer
from ..models.families import is_diffusion
from .editing import run_edit_job
from .models import ModelEntry, PipelineSlot

JOB_FILE = "job.json"
log = logging.getLogger("aldm.serve")


class QueueFull(Exception):
    """The bounded queue holds ``max_pending`` jobs already."""


class NotCancellable(Exception):
    """The job has already finished (done, failed or cancelled)."""


class _Interrupted(Exception):
    """Raised inside generation when the running job is cancelled or the server drains."""


def new_job_id() -> str:
    """A fresh random job id (12 hex characters, the only form the API accepts)."""
    return secrets.token_hex(6)  # 12 hex characters, the only job ids the API accepts


class JobQueue:
    """Runs generation jobs one at a time in a background thread."""

    def __init__(self, root: str, models: dict[str, ModelEntry], max_pending: int = 4, device=None,
                 batch_size: int = 4):
        self.root = os.path.abspath(root)
        self.jobs_dir = os.path.join(self.root, "jobs")
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(exclusive_writer(self.root, "server folder"))  # released by close()
        os.makedirs(self.jobs_dir, exist_ok=True)
        self.models = models
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.slot = PipelineSlot(device)
        self._jobs: dict[str, dict] = {}
        self._pending: deque[str] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._cancel: set[str] = set()
        self._thread: threading.Thread | None = None
        self._recover()

    # -- persistence ---------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> str:
        """The folder of job ``job_id``."""
        return os.path.join(self.jobs_dir, job_id)

    def samples_dir(self, job_id: str) -> str:
        """The ``aldm generate`` folder of job ``job_id``."""
        return os.path.join(self.job_dir(job_id), "samples")

    def _save(self, job: dict) -> None:
        atomic_write_text(os.path.join(self.job_dir(job["id"]), JOB_FILE), json.dumps(job, indent=2) + "\n")

    def _recover(self) -> None:
        found = []
        for name in sorted(os.listdir(self.jobs_dir)):
            path = os.path.join(self.jobs_dir, name, JOB_FILE)
            try:
                with open(path, encoding="utf-8") as fh:
                    job = json.load(fh)
            except (OSError, ValueError):
                log.warning("skipping %s: no readable %s", os.path.join(self.jobs_dir, name), JOB_FILE)
                continue
            if not isinstance(job, dict) or job.get("id") != name:
                log.warning("skipping %s: its job.json names another job", path)
                continue
            if "guidance" not in job and "guidance_scale" in job:  # jobs written by 0.2
                job["guidance"] = job.pop("guidance_scale")
            found.append(job)
        for job in sorted(found, key=lambda j: j.get("created", 0)):
            if job["status"] in ("queued", "running"):
                if job["model"] not in self.models:
                    job.update(status="failed", error=f"model {job['model']!r} is not served any more")
                    self._save(job)
                else:
                    job.update(status="queued", resumed=True)
                    self._save(job)
                    self._pending.append(job["id"])
            self._jobs[job["id"]] = job

    # -- API side ------------------------------------------------------------------------------
    def submit(self, request: dict) -> dict:
        """Queue a job for ``request`` (already validated: model, n, guidance, sampler, steps, seed)."""
        with self._cond:
            if len(self._pending) >= self.max_pending:
                raise QueueFull(f"busy: {len(self._pending)} job(s) queued or running (limit {self.max_pending}); "
                                "try again when one has finished")
            job_id = new_job_id()
            job = {"id": job_id, "status": "queued", "created": time.time(), "started": None, "finished": None,
                   "error": None, "resumed": False, **request,
                   "progress": {"done": 0, "total": request["n"], "step": 0, "steps": 0}}
            os.makedirs(self.samples_dir(job_id))
            self._save(job)
            self._jobs[job_id] = job
            self._pending.append(job_id)
            self._cond.notify()
            return self.view(job_id)

    def cancel(self, job_id: str) -> dict | None:
        """Cancel a job: a queued one leaves the queue now, a running one stops at its next denoising
        step (its finished samples stay). None when unknown; :class:`NotCancellable` when finished."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job["status"] not in ("queued", "running"):
                raise NotCancellable(f"job {job_id} is {job['status']}; only queued or running jobs can be cancelled")
            if job["status"] == "queued":  # not picked by the worker yet (it marks jobs running under this lock)
                self._pending.remove(job_id)
                job.update(status="cancelled", finished=time.time())
                self._save(job)
            else:
                self._cancel.add(job_id)  # the worker stops it at the next step and records it
        return self.view(job_id)

    def view(self, job_id: str) -> dict | None:
        """The job as the API shows it, with its finished samples (None when unknown)."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            out = json.loads(json.dumps(job))
            out["queue_position"] = (list(self._pending).index(job_id) if job_id in self._pending else None)
        out["samples"] = self.samples(job_id)
        out["elapsed_s"] = ((out["finished"] or time.time()) - out["started"]) if out["started"] else None
        return out

    def list(self) -> list[dict]:
        """Every job, newest first."""
        with self._cond:
            ids = sorted(self._jobs, key=lambda j: self._jobs[j]["created"], reverse=True)
        return [self.view(j) for j in ids]

    def samples(self, job_id: str) -> list[dict]:
        """Finished samples of a job (those with their sample.json), in index order."""
        folder = self.samples_dir(job_id)
        if not os.path.isdir(folder):
            return []
        out = []
        for name in sorted(os.listdir(folder)):
            if not name.startswith("sample-"):
                continue
            try:
                record = SampleSet(folder).read_record(name)
            except AldmError as exc:
                log.warning("skipping %s", exc)
                continue
            if record is None:
                continue
            out.append({"sample": name, "index": record.index, "mask_subject": record.mask_subject,
                        "mask_source": record.mask_source, "context_subject": record.context_subject,
                        "ground_truth_mask": record.mask_source.startswith("cache:"), "seed": record.seed,
                        "edit": record.mask_source.startswith("edit:"),
                        "native": os.path.isdir(os.path.join(folder, name, "native")),
                        "labels": os.path.isfile(os.path.join(folder, name, "model", f"{SEG_FILE}.nii.gz")),
                        "modalities": [m.lower() for m in record.channels]})
        return sorted(out, key=lambda s: s["index"])

    def sample_meta(self, job_id: str, sample: str):
        """The :class:`~aldm.artifacts.samples.SampleRecord` of a finished sample of a job, or None (also
        when its sample.json is damaged)."""
        try:
            return SampleSet(self.samples_dir(job_id)).read_record(sample)
        except AldmError:
            return None

    @property
    def pending(self) -> int:
        """How many jobs wait to run."""
        with self._cond:
            return len(self._pending)

    # -- worker --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread that runs queued jobs one at a time."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._work, name="aldm-jobs", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain: the running job stops at its next denoising step and is saved as queued (the next
        start resumes it from its finished samples); waits up to ``timeout`` seconds for the worker."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop the worker and release the output folder for another server."""
        self.stop()
        self._lock.close()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job_id = self._pending[0]
                job = self._jobs[job_id]
                job.update(status="running", started=job.get("started") or time.time())
                self._save(job)
            try:
                self._run(job)
                job.update(status="done", finished=time.time())
            except _Interrupted:
                if job_id in self._cancel:
                    job.update(status="cancelled", finished=time.time())
                else:  # draining: the next server start resumes it
                    job.update(status="queued", resumed=True)
            except AldmError as exc:
                job.update(status="failed", error=str(exc), finished=time.time())
            except Exception as exc:  # a bug must fail the job, never the server
                log.error("job %s failed:\n%s", job_id, traceback.format_exc())
                job.update(status="failed", error=f"internal error: {type(exc).__name__}: {exc}",
                           finished=time.time())
            with self._cond:
                self._pending.popleft()
                self._cancel.discard(job_id)
                self._save(job)
                if self._stop:
                    return

    def _run(self, job: dict) -> None:
        entry = self.models[job["model"]]
        if not entry.data:
            raise AldmError(f"model {entry.id}: its training cache is gone; start the server with --data CACHE")
        pipe = self.slot.get(entry)
        progress = job["progress"]
        last_save = [0.0]

        def on_progress(done, total, step, steps):
            if self._stop or job["id"] in self._cancel:
                raise _Interrupted
            already = job["n"] - total  # samples finished before this (resumed) run
            progress.update(done=already + done, total=job["n"], step=step, steps=steps)
            now = time.monotonic()
            if step == 0 or now - last_save[0] > 2.0:
                last_save[0] = now
                with self._cond:
                    self._save(job)

        if job.get("edit"):
            run_edit_job(entry, pipe, job, self.samples_dir(job["id"]), on_progress)
            progress.update(done=job["n"], step=0, steps=0)
            return
        settings = GenerationSettings(seed=job["seed"])  # a GAN: only the seed applies
        if is_diffusion(entry.kind):
            settings = GenerationSettings(guidance=job["guidance"], sampler=job.get("sampler"), steps=job.get("steps"),
                                          seed=job["seed"])
        runtime = GenerationRuntime(batch_size=self.batch_size, progress=False, pipeline=pipe, on_progress=on_progress)
        generate(GenerationRequest(entry.path, self.samples_dir(job["id"]), job["n"],
                                   MaskSource("appendix", entry.data), settings=settings, runtime=runtime))
        progress.update(done=job["n"], step=0, steps=0)
