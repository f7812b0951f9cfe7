"""HTTP front end of a :class:`~maskfit.serve.multitask.MultiTaskModel` (FastAPI).

Endpoints:

* ``GET /health`` → ``{"status": "ok", "base", "strategy", "tasks", ...}``
* ``GET /tasks`` → task name → type, labels, sparsity, base, sizes
* ``POST /predict`` with ``{"task": NAME, "inputs": [...]}`` → ``{"task", "type",
  "predictions": [...]}``. Inputs: sequence ``"text"`` or ``["text", "text pair"]``;
  tagging ``["word", ...]`` or ``"a whitespace separated sentence"``; choice
  ``{"context": "...", "choices": ["...", ...]}``.

Errors are JSON ``{"detail": message, "error": kind}``:

* 404 unknown task;
* 422 malformed body (pydantic's detail list) or inputs of the wrong kind for the task;
* 413 too many inputs (``> max_inputs``), an input longer than ``max_length`` tokens
  (never truncated silently: the client shortens it), or a body over
  ``max_body_bytes``;
* 500 anything else (logged with its traceback); the server keeps serving.

``/predict`` is a plain ``def`` endpoint, so FastAPI runs it in its threadpool: many
clients are served concurrently, tokenisation overlaps, and the model's lock
serialises the switch + forward.
"""
from __future__ import annotations

import logging
from typing import Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import MaskfitError
from .multitask import InputError, InputTooLongError, MultiTaskModel, UnknownTaskError

log = logging.getLogger("maskfit.serve")


class ChoiceInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    context: str
    choices: list[str] = Field(min_length=1)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str = Field(min_length=1)
    inputs: list[Union[str, list[str], ChoiceInput]] = Field(min_length=1)


def _error(status: int, kind: str, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, "error": kind})


def create_app(multitask_model: MultiTaskModel, max_inputs: int = 64, max_length: int = 512,
               max_body_bytes: int = 8 << 20) -> FastAPI:
    """The FastAPI app serving ``multitask_model``.

    ``max_inputs``: inputs per request (more → 413). ``max_length``: tokens per input
    (capped at the model's own limit; longer → 413, no truncation). ``max_body_bytes``:
    a request body declaring more bytes is refused with 413 before it is read.
    """
    model = multitask_model
    limit = min(int(max_length), model.max_length)
    app = FastAPI(title="maskfit", description="One frozen encoder, many 1-bit-mask tasks.")
    app.state.model = model

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_body_bytes:
            return _error(413, "body_too_large", f"request body of {size} bytes is over the limit of {max_body_bytes}")
        return await call_next(request)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # pragma: no cover - last resort
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal", f"internal error: {type(exc).__name__}")

    @app.get("/health")
    def health():
        return {"status": "ok", **model.info()}

    @app.get("/tasks")
    def tasks():
        return model.tasks_info()

    @app.post("/predict")
    def predict(req: PredictRequest):
        if req.task not in model.tasks:
            return _error(404, "unknown_task", f"unknown task '{req.task}' (registered: "
                                               f"{', '.join(sorted(model.tasks)) or 'none'})")
        if len(req.inputs) > max_inputs:
            return _error(413, "too_many_inputs", f"{len(req.inputs)} inputs, at most {max_inputs} per request")
        inputs = [x.model_dump() if isinstance(x, ChoiceInput) else x for x in req.inputs]
        try:
            preds = model.predict(req.task, inputs, max_length=limit, truncate=False)
        except UnknownTaskError as e:  # unregistered meanwhile
            return _error(404, "unknown_task", str(e))
        except InputTooLongError as e:
            return _error(413, "input_too_long", str(e))
        except (InputError, MaskfitError) as e:
            return _error(422, "bad_input", str(e))
        except Exception as e:  # model failure: report, keep serving
            log.exception("prediction failed for task %s", req.task)
            return _error(500, "internal", f"prediction failed: {type(e).__name__}: {str(e)[:200]}")
        return {"task": req.task, "type": model.task_type(req.task), "predictions": preds}

    return app


def serve(model_name: str, tasks: dict, host: str = "127.0.0.1", port: int = 8000, strategy: str = "cache",
          cache_budget_bytes: int | None = None, max_inputs: int = 64, max_length: int = 512,
          threads: int | None = None, log_level: str = "info", device: str = "cpu") -> None:
    """Load ``model_name`` once, register ``tasks`` (name → mask file or run dir), serve HTTP.

    Blocks until the server stops (Ctrl-C). Errors in the task files raise
    :class:`maskfit.MaskfileError` before the server starts. ``threads`` sets torch's
    intra-op threads (default: torch's choice); use the number of cores the server
    really owns, since an OpenMP region stalls when one of its threads is descheduled.
    ``device`` holds the base, the masks and the merged weights (``auto``, ``cpu``, ``cuda``...).
    """
    import uvicorn

    from ..runtime import set_threads

    if not tasks:
        raise MaskfitError("no tasks to serve: give at least one NAME=PATH")
    set_threads(threads)
    mt = MultiTaskModel(model_name, strategy=strategy, cache_budget_bytes=cache_budget_bytes, device=device)
    for name, path in tasks.items():
        mt.register(name, path)
    app = create_app(mt, max_inputs=max_inputs, max_length=max_length)
    log.info("serving %d task(s) on base %s (%s) at http://%s:%d (strategy %s)", len(tasks), model_name, mt.device,
             host, port, strategy)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
