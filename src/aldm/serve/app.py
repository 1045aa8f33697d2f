"""``aldm serve``: the web UI of paper Appendix A — an API and one page.

    app = create_app(["runs/ldm", "runs/k16"], out="aldm-serve")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints (OpenAPI at ``/openapi.json``, interactive docs at ``/docs``):

* ``GET  /api/models``                         the served models (domain, sampler choices, T)
* ``GET  /api/models/{id}/subjects``           the held-out patients an ALDM model edits
* ``POST /api/jobs``                           queue a generation job, or with ``edit`` a scan edit (202; 429
  when busy)
* ``GET  /api/jobs``, ``GET /api/jobs/{id}``   status, progress and finished samples
* ``POST /api/jobs/{id}/cancel``               cancel a queued or running job (409 once finished)
* ``GET  /api/jobs/{id}/samples/{sample}/volume/{channel}?source=synthetic|reference``
  uint8 volume for the viewer (see :mod:`aldm.serve.volumes`)
* ``GET  /api/jobs/{id}/samples/{sample}/files/{space}/{channel}.nii.gz``  one NIfTI
* ``GET  /api/jobs/{id}/samples/{sample}/download.zip?space=model|native|all``  the sample's NIfTIs

Every parameter is validated (unknown names and bad values get a 4xx with a message), files are
only served from validated names inside the output folder, request bodies over 64 KiB get 413,
and jobs live on disk (:mod:`aldm.serve.jobs`).
"""

from __future__ import annotations

import io
import logging
import math
import os
import zipfile
from contextlib import asynccontextmanager
from importlib import resources
from typing import Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import __version__
from ..artifacts.samples import SAMPLE_DONE, SPACES
from ..conditions import SEG_FILE
from ..diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS
from ..diffusion.settings import DEFAULT_GUIDANCE, GUIDANCE_RANGE, GenerationSettings
from ..errors import AldmError
from ..modalities import KNOWN_MODALITIES, volume_files
from ..models.families import is_diffusion
from .editing import EditSpec, check_edit, edit_subjects
from .guard import LOCAL_HOSTS, RequestGuard, page_policy
from .jobs import JobQueue, NotCancellable, QueueFull
from .models import model_entries
from .volumes import CHANNEL_PATTERN, inside, reference_volume, synthetic_volume

log = logging.getLogger("aldm.serve")
MAX_BODY_BYTES = 64 * 1024
MAX_SAMPLES = 64
JOB_ID = r"^[0-9a-f]{12}$"
SAMPLE = r"^sample-[0-9]{4}_[A-Za-z0-9._-]{1,160}$"
VolumeFile = Literal[tuple(f"{name}.nii.gz" for name in (*volume_files(KNOWN_MODALITIES), SEG_FILE))]


class JobRequest(BaseModel):
    """A generation request; sample i uses seed + i (paper Appendix A mask order)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=128, description="a model id from GET /api/models")
    n: int = Field(8, ge=1, le=MAX_SAMPLES, description="number of samples (the first 16 reuse ground-truth masks)")
    guidance: float = Field(DEFAULT_GUIDANCE, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1],
                            description="classifier-free guidance scale s (Eq. 3.8)")
    sampler: Literal[SAMPLERS] | None = Field(None, description=f"default: the model's ({DEFAULT_SAMPLER}; a "
                                                                "distilled model: its own grid)")
    steps: int | None = Field(None, ge=1, le=10000, description=f"sampler steps (default {DEFAULT_STEPS}; a distilled "
                                                               "model: its own); ancestral DDPM takes exactly T")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    edit: EditSpec | None = Field(None, description="edit a held-out patient's scan instead (n variants; ALDM "
                                                    "models only)")

    @field_validator("n", "guidance", "steps", "seed", mode="before")
    @classmethod
    def _a_json_number(cls, value, info: ValidationInfo):
        """Numbers only: "1" or true is refused, not coerced (1948.0 is the integer JSON Schema says it is); steps
        may be null (the model's own)."""
        if isinstance(value, (str, bool)) or (value is None and info.field_name != "steps"):
            raise ValueError("must be a JSON number")
        return value

    @field_validator("guidance")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("guidance must be a finite number")
        return value


class Progress(BaseModel):
    """How far a job is: samples done of total, and the denoising step of the current batch."""
    done: int
    total: int
    step: int
    steps: int


class SampleInfo(BaseModel):
    """One finished sample of a job: its name and how it was made."""
    sample: str
    index: int | None
    mask_subject: str | None
    mask_source: str | None
    context_subject: str | None
    ground_truth_mask: bool
    seed: int | None
    native: bool
    labels: bool = False  # the sample has its tumour's BraTS label map (model/seg.nii.gz)
    edit: bool = False  # an edit of a real scan (the reference is its input)
    modalities: list[str]


class Job(BaseModel):
    """A generation job as the API reports it: request, status, progress, samples, error."""
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    model: str
    n: int
    guidance: float | None
    sampler: str
    steps: int | None
    seed: int
    created: float
    started: float | None
    finished: float | None
    elapsed_s: float | None
    error: str | None
    resumed: bool
    queue_position: int | None
    progress: Progress
    samples: list[SampleInfo]
    edit: EditSpec | None = None


class ModelInfo(BaseModel):
    """A model the server offers (GET /api/models)."""
    id: str
    stage: str
    kind: str
    domain: str
    label: str
    image_size: int
    timesteps: int
    samplers: list[str]
    modalities: list[str]
    k: int | None


class Health(BaseModel):
    """GET /api/health: the server is up; which model is loaded and how many jobs wait."""
    status: str
    pending_jobs: int
    loaded_model: str | None


def _page() -> str:
    return resources.files("aldm.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(model_runs: list[str], out: str = "aldm-serve", data: list[str] | None = None,
               max_pending: int = 4, device=None, start_worker: bool = True, allowed_hosts=()) -> FastAPI:
    """The FastAPI app serving ``model_runs``; jobs and samples go under ``out``. It answers requests
    whose Host is 127.0.0.1, localhost, [::1] or one of ``allowed_hosts`` (the bound address, a reverse
    proxy's name); :mod:`aldm.serve.guard`."""
    entries = model_entries(model_runs, data)
    queue = JobQueue(out, entries, max_pending=max_pending, device=device)
    caches = {e.data for e in entries.values() if e.data}

    @asynccontextmanager
    async def lifespan(app):
        if start_worker:
            queue.start()
        yield
        queue.close()  # drains: the running job stops at its next step and resumes at the next start

    app = FastAPI(title="aldm", version=__version__, lifespan=lifespan,
                  description="Anatomically-conditioned latent diffusion: on-demand 3D glioma MRI synthesis "
                              "(paper Appendix A).")
    app.state.queue = queue

    _handle_errors(app)
    app.add_middleware(RequestGuard, allowed_hosts=(*LOCAL_HOSTS, *(allowed_hosts or ())), max_body=MAX_BODY_BYTES,
                       page_csp=page_policy(_page()))

    _job_routes(app, queue, entries)
    _sample_routes(app, queue, caches)
    return app


def _handle_errors(app: FastAPI) -> None:
    """Validation errors without the input echoed back; HTTP errors as JSON, a 405's Allow listing every
    route's methods for the path."""
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # location and message only: echoing the input back fails on NaN/Inf and may be large
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Allow must list every route's methods for this path, not one route's
            methods = set()
            for route in app.router.routes:
                if route.matches(request.scope)[0] != Match.NONE:
                    methods |= set(getattr(route, "methods", None) or ())
            headers["Allow"] = ", ".join(sorted(methods - {"HEAD"}))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def _job_of(queue: JobQueue, job_id: str) -> dict:
    """The job ``job_id`` of ``queue`` (404 when there is none)."""
    job = queue.view(job_id)
    if job is None:
        raise HTTPException(404, "no such job")
    return job


def _job_routes(app: FastAPI, queue: JobQueue, entries: dict) -> None:
    """The page, health, the models and the jobs: submit (validated like the generation command), cancel,
    list, view."""
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return _page()

    @app.get("/api/health", response_model=Health)
    def health():
        return {"status": "ok", "pending_jobs": queue.pending, "loaded_model": queue.slot.loaded}

    @app.get("/api/models", response_model=list[ModelInfo])
    def models():
        return [e.public() for e in entries.values()]

    @app.get("/api/models/{model_id}/subjects", response_model=list[str],
             responses={404: {"description": "unknown model"}})
    def subjects(model_id: str = Path(pattern=r"^[A-Za-z0-9._-]{1,128}$")):
        entry = entries.get(model_id)
        if entry is None:
            raise HTTPException(404, "unknown model; GET /api/models lists them")
        return edit_subjects(entry) if entry.kind == "aldm" else []

    @app.post("/api/jobs", response_model=Job, status_code=202,
              responses={400: {"description": "the body is not JSON"}, 404: {"description": "unknown model"},
                         413: {"description": "the body is over 64 KiB"}, 422: {"description": "invalid parameters"},
                         429: {"description": "the queue is full"}})
    def create_job(request: JobRequest):
        entry = entries.get(request.model)
        if entry is None:
            raise HTTPException(404, "unknown model; GET /api/models lists them")
        params = request.model_dump(exclude_none=True)
        if request.edit is not None:
            try:
                check_edit(entry, request.edit, request.seed)
            except AldmError as exc:
                raise HTTPException(422, f"{exc} (model {entry.id})") from exc
        if not is_diffusion(entry.kind):
            params.update(GenerationSettings().recorded(entry.kind))  # one generator pass: none of them applies
        else:
            try:
                resolved = GenerationSettings(guidance=request.guidance, sampler=request.sampler, steps=request.steps,
                                              seed=request.seed).for_model(entry.timesteps, entry.distilled)
                params.update(sampler=resolved.sampler, steps=resolved.steps)  # the model's defaults, written down
            except AldmError as exc:
                raise HTTPException(422, f"{exc} (model {entry.id})") from exc
        try:
            return queue.submit(params)
        except QueueFull as exc:
            return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": "10"})

    @app.post("/api/jobs/{job_id}/cancel", response_model=Job,
              responses={404: {"description": "unknown job"}, 409: {"description": "the job has finished"}})
    def cancel_job(job_id: str = Path(pattern=JOB_ID)):
        try:
            job = queue.cancel(job_id)
        except NotCancellable as exc:
            raise HTTPException(409, str(exc)) from exc
        if job is None:
            raise HTTPException(404, "no such job")
        return job

    @app.get("/api/jobs", response_model=list[Job])
    def list_jobs():
        return queue.list()

    @app.get("/api/jobs/{job_id}", response_model=Job, responses={404: {"description": "unknown job"}})
    def get_job(job_id: str = Path(pattern=JOB_ID)):
        return _job_of(queue, job_id)


def _sample_routes(app: FastAPI, queue: JobQueue, caches: set) -> None:
    """A finished sample's volumes for the viewer (synthetic, or the real reference), its NIfTI files and a
    zip of them."""

    def sample_dir_or_404(job_id: str, sample: str) -> str:
        _job_of(queue, job_id)
        if queue.sample_meta(job_id, sample) is None:
            raise HTTPException(404, "the job has no such finished sample")
        try:
            return inside(queue.samples_dir(job_id), sample)
        except AldmError as exc:
            raise HTTPException(404, "no such sample") from exc

    @app.get("/api/jobs/{job_id}/samples/{sample}/volume/{channel}",
             responses={200: {"content": {"application/octet-stream": {}},
                              "description": "uint8 (X, Y, Z) C-order volume; shape in X-Volume-Shape"},
                        404: {"description": "unknown job, sample or reference subject"}})
    def volume(job_id: str = Path(pattern=JOB_ID), sample: str = Path(pattern=SAMPLE),
               channel: str = Path(pattern=CHANNEL_PATTERN),
               source: Literal["synthetic", "reference"] = Query("synthetic")):
        folder = sample_dir_or_404(job_id, sample)
        meta = queue.sample_meta(job_id, sample)
        if channel != "mask" and channel not in [m.lower() for m in meta.channels]:
            raise HTTPException(404, f"sample {sample} has no {channel}")
        try:
            if source == "synthetic":
                array = synthetic_volume(folder, channel)
                subject = ""
            else:
                cache, subject = meta.mask_cache, meta.context_subject
                if not subject or cache not in caches:
                    raise HTTPException(404, f"sample {sample} has no real reference volume")
                array = reference_volume(cache, subject, channel)
        except AldmError as exc:  # the reason (with server paths) goes to the log, not to the client
            log.warning("%s", exc)
            raise HTTPException(404, "this volume cannot be read on the server") from exc
        array = np.ascontiguousarray(array)
        return Response(array.tobytes(), media_type="application/octet-stream",
                        headers={"X-Volume-Shape": ",".join(map(str, array.shape)), "X-Subject": subject,
                                 "Cache-Control": "private, max-age=3600"})

    @app.get("/api/jobs/{job_id}/samples/{sample}/files/{space}/{filename}",
             responses={200: {"content": {"application/gzip": {}}}, 404: {"description": "no such file"}})
    def nifti_file(job_id: str = Path(pattern=JOB_ID), sample: str = Path(pattern=SAMPLE),
                   space: Literal["model", "native"] = Path(),
                   filename: VolumeFile = Path()):
        folder = sample_dir_or_404(job_id, sample)
        try:
            path = inside(folder, space, filename)
        except AldmError as exc:
            raise HTTPException(404, "no such file") from exc
        if not os.path.isfile(path):
            raise HTTPException(404, f"sample {sample} has no {space}/{filename}")
        return FileResponse(path, media_type="application/gzip", filename=f"{sample}_{space}_{filename}")

    @app.get("/api/jobs/{job_id}/samples/{sample}/download.zip",
             responses={200: {"content": {"application/zip": {}}}, 404: {"description": "no such sample"}})
    def download(job_id: str = Path(pattern=JOB_ID), sample: str = Path(pattern=SAMPLE),
                 space: Literal["model", "native", "all"] = Query("all")):
        folder = sample_dir_or_404(job_id, sample)
        channels = (*volume_files(queue.sample_meta(job_id, sample).channels), SEG_FILE)  # seg when it has one
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:  # .nii.gz is compressed already
            for sp in (SPACES if space == "all" else (space,)):
                for channel in channels:
                    path = inside(folder, sp, f"{channel}.nii.gz")
                    if os.path.isfile(path):
                        zf.write(path, f"{sample}/{sp}/{channel}.nii.gz")
            zf.write(inside(folder, SAMPLE_DONE), f"{sample}/{SAMPLE_DONE}")
        return Response(buf.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{sample}.zip"'})
