"""An OpenAI-compatible images API over a difflux text-to-image pipeline, in one process or on Ray Serve.

``POST /v1/images/generations`` takes the body of OpenAI's "create image" call:

- ``prompt`` (required), ``n`` (images, default 1), ``size`` (``"WIDTHxHEIGHT"`` in pixels, each a
  multiple of 8; default the model's own size), ``response_format`` (``"b64_json"``, the default,
  or ``"url"``), ``model`` (informational), ``output_format`` (``"png"`` only), ``quality``,
  ``style`` and ``user`` (accepted, ignored);
- difflux's own fields (the ``openai`` client sends them with ``extra_body=``): ``steps`` (or
  ``num_inference_steps``), ``guidance_scale``, ``seed`` (image ``k`` of a request gets
  ``seed + k``; without it a random seed, returned in each item's ``seed``), ``scheduler`` (class
  name or sampler alias, e.g. ``"DPM++ 2M Karras"``), ``negative_prompt``.

It answers ``{"created": UNIX_SECONDS, "data": [{"b64_json": ..., "seed": ...}, ...]}`` (with
``"url"`` instead of ``"b64_json"`` when asked; the URL serves the PNG from this server under
``/v1/images/files/``, the newest ``keep`` images are kept). ``GET /v1/models`` lists the model.

Every refused request is a 4xx with OpenAI's error body ``{"error": {"message", "type", "param",
"code"}}``: an unknown field, a wrong type, ``n``/``size``/``steps`` over the limits
(:class:`Limits`), an unknown scheduler, a body that is not JSON. A failure inside the pipeline
is a 500 with the same body and no traceback (the traceback goes to the server's log).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import Request  # at module level: FastAPI reads the route annotations from the module
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Backend",
    "Failure",
    "Generated",
    "ImageRequest",
    "ImageService",
    "ImageStore",
    "Limits",
    "LocalBackend",
    "create_app",
    "serve_local",
]

logger = logging.getLogger("difflux_ray.server")

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class ImageRequest(BaseModel):
    """The JSON body of ``POST /v1/images/generations`` (unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = None
    n: int = 1
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png"] | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    negative_prompt: str | None = Field(default=None, max_length=4000)
    steps: int | None = Field(default=None, alias="num_inference_steps")
    guidance_scale: float | None = Field(default=None, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    scheduler: str | None = None


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond it the server answers 400.

    :param max_n: images per request.
    :param max_size: pixels per side (``size``); sides are also multiples of 8, at least 8.
    :param max_steps: denoising steps.
    """

    max_n: int = 4
    max_size: int = 1024
    max_steps: int = 100


class RequestError(ValueError):
    """A request the server refuses: HTTP ``status``, the message, and the body field (``param``) at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


@dataclass(frozen=True)
class Generated:
    """A request's images (PNG bytes) and the seed of each."""

    images: list[bytes]
    seeds: list[int]


@dataclass(frozen=True)
class Failure:
    """Why a request made no image: HTTP ``status`` (4xx: the request; 500: the server), message, field."""

    status: int
    message: str
    param: str | None = None


def check_request(request: ImageRequest, limits: Limits) -> tuple[int | None, int | None]:
    """Check ``request`` against ``limits``; return its ``(height, width)`` (``None``: the model's own).

    :raises RequestError: ``n``, ``size`` or ``steps`` out of range, or ``size`` not ``WxH``.
    """
    if not 1 <= request.n <= limits.max_n:
        raise RequestError(f"n must be between 1 and {limits.max_n}, not {request.n}", "n")
    if request.steps is not None and not 1 <= request.steps <= limits.max_steps:
        raise RequestError(f"steps must be between 1 and {limits.max_steps}, not {request.steps}", "steps")
    if request.size is None or request.size == "auto":
        return None, None
    match = _SIZE.match(request.size)
    if match is None:
        raise RequestError(f"size must be 'WIDTHxHEIGHT' in pixels, such as '512x512', not {request.size!r}", "size")
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if side < 8 or side > limits.max_size or side % 8:
            raise RequestError(
                f"size {request.size!r}: each side must be a multiple of 8 from 8 to {limits.max_size}", "size"
            )
    return height, width


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class ImageService:
    """One text-to-image pipeline answering image requests, several at once when they agree.

    Requests with the same size, steps, guidance, scheduler and negative prompt run as one
    pipeline call (their prompts and per-image seeded generators side by side); calls are
    serialised by a lock, so one service is safe to call from several threads.

    :param model: folder, repo id or embedded name (``difflux:digits-text2img``).
    :param limits: what one request may ask for.
    :param device: ``cpu``, ``cuda`` ...; default CUDA when there is a GPU.
    :param dtype: weights dtype (default as saved).
    :param pipe: an already-loaded pipeline to use instead of loading ``model``.
    :raises difflux.cli.UsageError: the pipeline does not take a ``prompt``.
    """

    def __init__(
        self,
        model: str,
        limits: Limits | None = None,
        device: str | None = None,
        dtype: str | None = None,
        pipe: Any = None,
    ) -> None:
        from difflux.cli import EMBEDDED_MODELS, UsageError

        from .runner import RunnerConfig, call_parameters, default_loader

        self.model = model
        self.limits = limits or Limits()
        if pipe is None:
            pipe = default_loader(RunnerConfig(model=model, output="", device=device, dtype=dtype))
        self.pipe = pipe
        self.pipe.set_progress_bar_config(disable=True)
        params = call_parameters(type(pipe))
        if "prompt" not in params:
            raise UsageError(f"difflux serve needs a text-to-image pipeline; {type(pipe).__name__} takes no prompt")
        self._params = params
        self.default_steps = EMBEDDED_MODELS[model][1] if model in EMBEDDED_MODELS else None
        self._schedulers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _scheduler(self, name: str) -> Any:
        from difflux.cli import UsageError, scheduler_for

        if name not in self._schedulers:
            try:
                self._schedulers[name] = scheduler_for(self.pipe, name)
            except UsageError as exc:
                raise RequestError(str(exc).replace("--scheduler", "scheduler"), "scheduler") from None
        return self._schedulers[name]

    def _group_key(self, request: ImageRequest) -> tuple[Any, ...]:
        height, width = check_request(request, self.limits)
        if request.scheduler is not None:
            self._scheduler(request.scheduler)
        for name, value in (("guidance_scale", request.guidance_scale), ("negative_prompt", request.negative_prompt)):
            if value is not None and name not in self._params:
                raise RequestError(f"{type(self.pipe).__name__} does not take {name}", name)
        steps = request.steps or self.default_steps
        return height, width, steps, request.guidance_scale, request.scheduler, request.negative_prompt

    def generate(self, requests: Sequence[ImageRequest]) -> list[Generated | Failure]:
        """Answer each request: its images, or why it has none (one refused request fails no other)."""
        import torch

        results: list[Generated | Failure | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, request in enumerate(requests):
            try:
                groups.setdefault(self._group_key(request), []).append(i)
            except RequestError as exc:
                results[i] = Failure(exc.status, exc.message, exc.param)
        for (height, width, steps, guidance, scheduler, negative), members in groups.items():
            prompts: list[str] = []
            seeds: list[int] = []
            for i in members:
                request = requests[i]
                first = request.seed if request.seed is not None else secrets.randbelow(2**62)
                prompts += [request.prompt] * request.n
                seeds += [first + k for k in range(request.n)]
            kwargs: dict[str, Any] = {"prompt": prompts, "output_type": "pil"}
            kwargs["generator"] = [torch.Generator().manual_seed(s) for s in seeds]
            for name, value in (
                ("height", height),
                ("width", width),
                ("num_inference_steps", steps),
                ("guidance_scale", guidance),
                ("negative_prompt", negative),
            ):
                if value is not None:
                    kwargs[name] = value
            try:
                images = self._run(kwargs, scheduler)
            except (ValueError, TypeError) as exc:  # the pipeline's own input checks
                for i in members:
                    results[i] = Failure(400, " ".join(str(exc).split()))
                continue
            except Exception:
                logger.exception("difflux serve: the pipeline failed")
                for i in members:
                    results[i] = Failure(500, "the server failed to make the image; its log has the details")
                continue
            start = 0
            for i in members:
                n = requests[i].n
                results[i] = Generated([_png(im) for im in images[start : start + n]], seeds[start : start + n])
                start += n
        return [r if r is not None else Failure(500, "no result") for r in results]

    def _run(self, kwargs: dict[str, Any], scheduler: str | None) -> list[Any]:
        with self._lock:
            original = self.pipe.scheduler
            if scheduler is not None:
                self.pipe.register_modules(scheduler=self._scheduler(scheduler))
            try:
                return list(self.pipe(**kwargs).images)
            finally:
                if scheduler is not None:
                    self.pipe.register_modules(scheduler=original)


class ImageStore:
    """PNG files behind ``response_format="url"``: the newest ``keep`` kept in ``folder`` (default: a temp folder)."""

    _NAME = re.compile(r"^[0-9a-f]{32}\.png$")

    def __init__(self, folder: str | Path | None = None, keep: int = 256) -> None:
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="difflux-serve-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._lock = threading.Lock()

    def put(self, data: bytes) -> str:
        """Store one PNG; return its file name."""
        from .runner import write_atomically

        name = f"{uuid.uuid4().hex}.png"
        write_atomically(self.folder / name, data)
        with self._lock:
            files = sorted(self.folder.glob("*.png"), key=lambda p: p.stat().st_mtime_ns)
            for old in files[: max(0, len(files) - self.keep)]:
                old.unlink(missing_ok=True)
        return name

    def path(self, name: str) -> Path | None:
        """The stored file ``name``, or ``None`` (also for names that are not ours)."""
        if not self._NAME.match(name):
            return None
        path = self.folder / name
        return path if path.is_file() else None


class Backend(Protocol):
    """What the HTTP app calls: ``await backend.generate(request)``."""

    async def generate(self, request: ImageRequest) -> Generated | Failure: ...


@dataclass
class LocalBackend:
    """The service in this process; each request runs in a worker thread (one at a time, by the service's lock)."""

    service: ImageService

    async def generate(self, request: ImageRequest) -> Generated | Failure:
        results = await asyncio.to_thread(self.service.generate, [request])
        return results[0]


def _error(status: int, message: str, param: str | None = None) -> Any:
    from fastapi.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(status_code=status, content=body)


def _validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    first = dict(errors[0]) if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "the body is not valid JSON", None
    if kind == "extra_forbidden":
        fields = "prompt, n, size, response_format, model, steps, guidance_scale, seed, scheduler, negative_prompt"
        return f"unknown field {param!r}; this server takes {fields}", param
    if kind in ("model_attributes_type", "dict_type") and not loc:
        return 'the body must be a JSON object, such as {"prompt": "a seven"}', None
    if kind == "missing":
        return f"{param or 'the body'} is required", param
    message = str(first.get("msg", "invalid request"))
    return (f"{param}: {message}" if param else message), param


def create_app(backend: Backend, model: str, store: ImageStore | None = None) -> Any:
    """The FastAPI app of the images API over ``backend`` (see the module docstring for the routes)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse
    from starlette.exceptions import HTTPException

    store = store or ImageStore()
    app = FastAPI(title="difflux images API", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Any:
        return _error(400, *_validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Any:
        logger.exception("difflux serve: unexpected error")
        return _error(500, "the server failed to answer; its log has the details")

    @app.post("/v1/images/generations")
    async def generations(body: ImageRequest, request: Request) -> Any:
        result = await backend.generate(body)
        if isinstance(result, Failure):
            return _error(result.status, result.message, result.param)
        data: list[dict[str, Any]] = []
        for png, seed in zip(result.images, result.seeds, strict=True):
            if body.response_format == "url":
                url = str(request.url_for("image_file", name=store.put(png)))
                data.append({"url": url, "seed": seed})
            else:
                data.append({"b64_json": base64.b64encode(png).decode("ascii"), "seed": seed})
        return {"created": int(time.time()), "data": data, "output_format": "png"}

    @app.get("/v1/images/files/{name}", name="image_file")
    async def image_file(name: str) -> Any:
        path = store.path(name)
        if path is None:
            return _error(404, f"no image {name!r} here (images are kept for the newest {store.keep} only)")
        return FileResponse(path, media_type="image/png")

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "difflux"}]}

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    return app


def serve_local(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> None:
    """Load ``model`` and serve it in this process with uvicorn until interrupted."""
    import uvicorn

    service = ImageService(model, limits, device=device, dtype=dtype)
    uvicorn.run(create_app(LocalBackend(service), model), host=host, port=port, log_level="info")
