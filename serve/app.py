"""The ASGI app: one static page, a JSON API over a job queue, and the PNGs it made.

Routes::

    GET  /                             the page (serve/static/index.html; no external resources)
    GET  /api/info                     model facts, limits and defaults
    POST /api/generate                 JSON {prompts, n, seed, temperature, top_k, top_p, guidance, candidates}
    POST /api/edit                     multipart: image file, prompt, keep_mode, keep_rows | keep_fraction, ...
    GET  /api/jobs/{id}                state, progress (codes done of total), results when done
    GET  /api/jobs/{id}/images/{i}.png one image, with prompt, seed and settings in its PNG text chunks
    GET  /api/jobs/{id}/grid.png       the grid (one row per prompt)
    GET  /api/jobs/{id}/input.png      (edit) the input as the model sees it

A submission is checked before it is queued: bad input is a 4xx with a message, a
full queue a 503 "busy, try again"; unexpected errors are logged and answered with a
one-line 500, never a traceback.
"""
from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dalle.images import make_grid, png_bytes, png_metadata, slugify
from serve.jobs import Job, JobQueue, QueueFull
from serve.model import ServedModel
from serve.requests import Limits, RequestError, decode_upload, parse_keep, parse_prompts, sampling_options

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
FORM_OVERHEAD = 64 * 1024   # multipart headers and the text fields around the file


def _error(message: str, status: int, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _result(gens: list, settings: dict[str, Any], extra: dict[str, bytes] | None = None) -> dict[str, Any]:
    """PNG bytes (with metadata) of each generation and of the grid, and what the page lists."""
    images, listing = [], []
    for i, g in enumerate(gens):
        images.append(png_bytes(g.image, png_metadata(g, settings)))
        listing.append({"prompt": g.prompt, "index": g.index, "seed": str(g.seed), "score": round(g.score, 4),
                        "name": f"{slugify(g.prompt)}_{g.index:03d}.png"})
    prompts = list(dict.fromkeys(g.prompt for g in gens))
    grid = make_grid([g.image for g in gens], ncol=max(1, len(gens) // len(prompts)))
    grid_png = png_bytes(grid, {"prompts": json.dumps(prompts), "settings": json.dumps(settings, sort_keys=True),
                                "software": "dalle"})
    return {"images": images, "listing": listing, "grid": grid_png, "settings": settings, **(extra or {})}


def create_app(model: ServedModel, limits: Limits = Limits()) -> Starlette:
    """The web app around one loaded model.

    Args:
        model: the model, loaded once for the life of the app.
        limits: what one request may ask for, and the queue size.
    Returns:
        A Starlette app; ``app.state.jobs`` is its :class:`JobQueue`.
    """
    jobs = JobQueue(size=limits.queue_size, keep=limits.keep_jobs)
    info = model.info

    def warnings_for(prompts: list[str]) -> list[str]:
        out = []
        for p in prompts:
            n = model.n_tokens(p)
            if n > info.text_len:
                out.append(f"prompt is {n} tokens, truncated to {info.text_len}: {p[:60]!r}")
        return out

    def submit(job: Job) -> JSONResponse:
        try:
            jobs.submit(job)
        except QueueFull as e:
            return _error(str(e), 503, **{"Retry-After": "5"})
        return JSONResponse({"id": job.id, "url": f"/api/jobs/{job.id}"}, status_code=202)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def api_info(request: Request) -> Response:
        return JSONResponse({"model": info.name, "resolution": info.resolution, "image_grid": info.image_grid,
                             "text_len": info.text_len, "limits": limits.public(),
                             "defaults": {"n": 4, "seed": 0,
                                          **{k: v for k, v in info.sampling.items() if v is not None},
                                          "keep_rows": info.image_grid // 2, "keep_fraction": 0.5}})

    async def api_generate(request: Request) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            return _error("the request body must be JSON", 400)
        if not isinstance(body, dict):
            return _error("the request body must be a JSON object", 400)
        try:
            prompts = parse_prompts(body.get("prompts"), limits)
            opts = sampling_options(body, limits, info.sampling)
        except RequestError as e:
            return _error(e.message, e.status)
        settings = {**opts, "model": info.name}
        warnings = warnings_for(prompts)

        def run(job: Job) -> dict[str, Any]:
            n, seed = opts["n"], opts["seed"]
            sampling = {k: v for k, v in opts.items() if k not in ("n", "seed")}
            gens = model.generate(prompts, n=n, seed=seed, progress=job.report, **sampling)
            return {**_result(gens, settings), "warnings": warnings}

        return submit(Job("generate", run))

    async def api_edit(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limits.max_upload_bytes + FORM_OVERHEAD:
            return _error(f"upload is {int(length) / 2**20:.1f} MiB: at most "
                          f"{limits.max_upload_bytes / 2**20:g} MiB", 413)
        try:
            form = await request.form(max_files=1, max_fields=32)
        except Exception as e:   # malformed multipart body
            return _error(f"could not read the form ({e.__class__.__name__}); send multipart/form-data", 400)
        try:
            upload = form.get("image")
            if upload is None or isinstance(upload, str) or not getattr(upload, "filename", ""):
                raise RequestError("no image: choose an image file to edit")
            data = await upload.read(limits.max_upload_bytes + 1)
            prompt = " ".join(parse_prompts(form.get("prompt"), limits))   # one caption, even over lines
            opts = sampling_options(form, limits, info.sampling)
            keep_rows, keep_fraction = parse_keep(form, info.image_grid)
            image = decode_upload(data, limits, info.resolution)
        except RequestError as e:
            return _error(e.message, e.status)
        finally:
            await form.close()
        settings = {**opts, "model": info.name, "image": upload.filename, "keep_rows": keep_rows,
                    "keep_fraction": keep_fraction}
        warnings = warnings_for([prompt])

        def run(job: Job) -> dict[str, Any]:
            sampling = {k: v for k, v in opts.items() if k not in ("n", "seed")}
            gens = model.edit(image, prompt, keep_rows=keep_rows, keep_fraction=keep_fraction, n=opts["n"],
                              seed=opts["seed"], progress=job.report, **sampling)
            return {**_result(gens, settings, {"input": png_bytes(image, {"software": "dalle"})}),
                    "warnings": warnings, "keep_rows": keep_rows, "keep_fraction": keep_fraction}

        return submit(Job("edit", run))

    def find(request: Request) -> Job:
        job = jobs.get(request.path_params["job_id"])
        if job is None:
            raise HTTPException(404, "no such request (finished requests are kept for a while, then dropped)")
        return job

    async def api_job(request: Request) -> Response:
        job = find(request)
        out: dict[str, Any] = {"id": job.id, "kind": job.kind, "state": job.state, "done": job.done,
                               "total": job.total, "ahead": jobs.ahead_of(job), "error": job.error}
        if job.state == "done":
            r = job.result
            base = f"/api/jobs/{job.id}"
            out["images"] = [{**item, "url": f"{base}/images/{i}.png"} for i, item in enumerate(r["listing"])]
            out["grid_url"] = f"{base}/grid.png"
            out["settings"] = r["settings"]
            out["warnings"] = r.get("warnings", [])
            if "input" in r:
                out["input_url"] = f"{base}/input.png"
                out["keep_rows"], out["keep_fraction"] = r["keep_rows"], r["keep_fraction"]
            out["seconds"] = round((job.finished or 0) - (job.started or 0), 3)
        return JSONResponse(out, headers={"Cache-Control": "no-store"})

    def png(data: bytes, name: str) -> Response:
        return Response(data, media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{name}"'})

    async def job_image(request: Request) -> Response:
        job = find(request)
        if job.state != "done":
            raise HTTPException(404, "this request has no images (yet)")
        i = request.path_params["index"]
        if not 0 <= i < len(job.result["images"]):
            raise HTTPException(404, "no such image")
        return png(job.result["images"][i], job.result["listing"][i]["name"])

    async def job_grid(request: Request) -> Response:
        job = find(request)
        if job.state != "done":
            raise HTTPException(404, "this request has no grid (yet)")
        return png(job.result["grid"], "grid.png")

    async def job_input(request: Request) -> Response:
        job = find(request)
        if job.state != "done" or "input" not in job.result:
            raise HTTPException(404, "this request has no input image")
        return png(job.result["input"], "input.png")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(str(exc.detail), exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return _error(f"internal error ({exc.__class__.__name__}); see the server log", 500)

    routes = [
        Route("/", index),
        Route("/api/info", api_info),
        Route("/api/generate", api_generate, methods=["POST"]),
        Route("/api/edit", api_edit, methods=["POST"]),
        Route("/api/jobs/{job_id:str}", api_job),
        Route("/api/jobs/{job_id:str}/images/{index:int}.png", job_image),
        Route("/api/jobs/{job_id:str}/grid.png", job_grid),
        Route("/api/jobs/{job_id:str}/input.png", job_input),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        jobs.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error},
                    lifespan=lifespan)
    app.state.jobs = jobs
    app.state.model = model
    return app


def check_port(host: str, port: int) -> None:
    """Raise ValueError with a clear message when ``host:port`` cannot be bound."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port "
                         "or --host") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now."""
    with socket.create_server((host, 0)) as s:
        return s.getsockname()[1]


class LocalServer:
    """uvicorn running ``app`` in a background thread (tests, screenshots): ``with LocalServer(app) as url:``."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="dalle-serve-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def run(model_dir: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
        limits: Limits = Limits()) -> None:
    """Load the model once and serve the page until interrupted (what ``dalle serve`` calls).

    Args:
        model_dir: model bundle directory (None: the embedded default model).
        host: interface to bind; 127.0.0.1 (this machine only) unless told otherwise.
        port: TCP port.
        device: ``auto``, ``cpu`` or ``cuda``.
        limits: request limits and queue size.
    """
    import uvicorn
    check_port(host, port)
    t0 = time.perf_counter()
    model = ServedModel(model_dir, device=device)
    log.info("loaded %s in %.1f s", model.info.name, time.perf_counter() - t0)
    app = create_app(model, limits)
    shown = f"[{host}]" if ":" in host else host
    where = ("this machine only" if host in ("127.0.0.1", "localhost", "::1")
             else "reachable from the network: anyone who can reach this address can use the model")
    print(f"dalle serve: model {model.info.name}\n"
          f"dalle serve: open http://{shown}:{port}/  (bound to {host}: {where}; Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
