"""HTTP front end of a :class:`~maskfit.serve.multitask.MultiTaskModel` (FastAPI).

Endpoints:

* ``GET /health`` → ``{"status": "ok", "base", "strategy", "tasks", ...}``
* ``GET /tasks`` → task name → type, labels, inputs, sparsity, base, sizes (no file paths)
* ``POST /predict`` with ``{"task": NAME, "inputs": [...]}`` → ``{"task", "type",
  "predictions": [...]}``. Inputs: sequence ``"text"`` or ``["text", "text pair"]``;
  tagging ``["word", ...]`` or ``"a whitespace separated sentence"``; choice
  ``{"context": "...", "choices": ["...", ...]}``.

Errors are JSON ``{"detail": message, "error": kind}`` and are part of the OpenAPI schema:

* 400 a body that cannot be parsed at all (e.g. nested too deeply);
* 401 a missing or wrong API key, when the server has one (``api_key``; ``/health``
  stays open for probes, but tells only ``{"status": "ok"}`` without the key);
* 404 unknown task;
* 422 malformed body (``detail`` is pydantic's list, with non-finite numbers such as
  ``NaN`` written as strings) or inputs of the wrong kind for the task (a pair sent to a
  task trained on single texts, and the other way round);
* 413 too many inputs (``> max_inputs``), an input longer than ``max_length`` tokens
  (never truncated silently: the client shortens it), more than ``max_tokens`` tokens
  in one request (counted as the model runs them: padded batches), or a body over
  ``max_body_bytes``: counted on the bytes actually received, whatever the transfer
  encoding, so a chunked upload is cut off at the limit;
* 500 anything else (logged with its traceback); the server keeps serving.

``/predict`` is a plain ``def`` endpoint, so FastAPI runs it in its threadpool: many
clients are served concurrently, tokenisation overlaps, and the model's lock
serialises the switch + forward.
"""
from __future__ import annotations

import logging
import math
import os
import secrets
from typing import Any, Literal, Optional, Union

from fastapi import Body, Depends, FastAPI, Request, Security
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, MaskfitError
from .multitask import InputError, InputTooLongError, MultiTaskModel, UnknownTaskError

log = logging.getLogger("maskfit.serve")

API_KEY_ENV = "MASKFIT_API_KEY"
"""Environment variable holding the API key of ``maskfit serve`` (safer than ``--api-key``,
which other users of the machine can read in the process list)."""


class ChoiceInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    context: str
    choices: list[str] = Field(min_length=1)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str = Field(min_length=1)
    inputs: list[Union[str, list[str], ChoiceInput]] = Field(min_length=1)


class SequenceAnswer(BaseModel):
    label: str
    probabilities: dict[str, float]


class TaggingAnswer(BaseModel):
    words: list[str]
    tags: list[str]


class ChoiceAnswer(BaseModel):
    choice: int
    probabilities: list[float]


class PredictResponse(BaseModel):
    task: str
    type: Literal["sequence", "tagging", "choice"]
    predictions: list[Union[SequenceAnswer, TaggingAnswer, ChoiceAnswer]]


class TaskInfo(BaseModel):
    type: str
    labels: Optional[list[str]]
    inputs: Optional[Literal["single", "pair"]] = Field(
        description="what a sequence task was trained on, and so accepts (null: not recorded, both accepted)")
    sparsity: Optional[float]
    base: Optional[str]
    fingerprint: Optional[str]
    masked_weights: Optional[int]
    mask_bytes: int
    head_params: int
    file_bytes: int
    max_length: Optional[int]


class ErrorResponse(BaseModel):
    detail: Union[str, list[dict[str, Any]]] = Field(description="what is wrong (pydantic's list for a malformed body)")
    error: str = Field(description="the kind of error, e.g. unknown_task, bad_input, too_many_inputs")


ERRORS = {
    400: "the body cannot be parsed",
    401: "missing or wrong API key",
    404: "unknown task",
    413: "too many inputs, an input or a request too long, or a body over the size limit",
    422: "malformed body, or inputs of the wrong kind for the task",
    500: "a failure inside the model (the server keeps serving)",
}
_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          413: "body_too_large", 422: "invalid_body"}


_SENTENCE = "a gripping, well acted film"
_EXAMPLE = {("sequence", None): _SENTENCE, ("sequence", "single"): _SENTENCE,
            ("sequence", "pair"): ["A man is playing a guitar.", "Someone plays music."],
            ("tagging", None): ["EU", "rejects", "German", "call"],
            ("choice", None): {"context": "Which is a mammal?", "choices": ["shark", "whale", "trout"]}}
"""An input of each kind, for the request examples of the OpenAPI schema (one per task served at start)."""


def _error(status: int, kind: str, detail, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, "error": kind}, headers=headers)


def _responses(*codes: int) -> dict:
    return {c: {"model": ErrorResponse, "description": ERRORS[c]} for c in codes}


def _json_safe(x, depth: int = 0):
    """``x`` with what JSON cannot hold (NaN, infinities, objects) as strings, and long strings cut."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, str):
        return x if len(x) <= 200 else x[:200] + "..."
    if x is None or isinstance(x, (bool, int, float)):
        return x
    if depth > 20:
        return "..."
    if isinstance(x, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in list(x.items())[:50]}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in list(x)[:50]]
    return str(x)[:200]


class BodyLimit:
    """Refuse (413) a request body over ``max_bytes``, counting the bytes actually received.

    ``Content-Length`` alone is not enough: a ``Transfer-Encoding: chunked`` body has none.
    The body is read here, chunk by chunk, and the request is answered 413 as soon as the
    count passes the limit (the rest is never read; the server closes the connection).
    Under the limit the body is handed on as received (FastAPI reads it whole anyway).
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def _refuse(self, send, size: str) -> None:
        response = _error(413, "body_too_large", f"request body of {size} bytes is over the limit of "
                                                 f"{self.max_bytes}", headers={"Connection": "close"})
        await response({"type": "http"}, None, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, declared.decode())
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await self._refuse(send, f"more than {self.max_bytes}")
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # waits for the disconnect, as the server's own receive does
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


def create_app(multitask_model: MultiTaskModel, max_inputs: int = 64, max_length: int = 512,
               max_body_bytes: int = 8 << 20, max_tokens: int = 16384, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving ``multitask_model``.

    ``max_inputs``: inputs per request (more → 413). ``max_length``: tokens per input
    (capped at the model's own limit; longer → 413, no truncation). ``max_tokens``: tokens
    per request, as the model runs them (padded batches; more → 413). ``max_body_bytes``:
    bytes of a request body, counted as they arrive (more → 413). ``api_key``: when set,
    ``/predict`` and ``/tasks`` need ``Authorization: Bearer <api_key>`` (else 401).
    """
    for name, value in (("max_inputs", max_inputs), ("max_length", max_length), ("max_tokens", max_tokens),
                        ("max_body_bytes", max_body_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ConfigError("the API key must be a non-empty string")
    model = multitask_model
    limit = min(int(max_length), model.max_length)
    app = FastAPI(title="maskfit", description="One frozen encoder, many 1-bit-mask tasks.")
    app.state.model = model
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    bearer = HTTPBearer(auto_error=False, description=f"the server's API key (--api-key or ${API_KEY_ENV})")

    def key_ok(token: str | None) -> bool:
        return api_key is None or secrets.compare_digest((token or "").encode(), api_key.encode())

    def check_key(credentials: Optional[HTTPAuthorizationCredentials] = Security(bearer)) -> None:
        if not key_ok(credentials.credentials if credentials is not None else None):
            raise HTTPException(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(check_key)] if api_key is not None else []
    auth = (401,) if api_key is not None else ()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        # pydantic echoes the input; NaN or Infinity (which Python's JSON parser accepts) would make the
        # default 422 response itself unserialisable, a 500
        return _error(422, "invalid_body", _json_safe(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, _KINDS.get(exc.status_code, "error"), str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # pragma: no cover - last resort
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal", f"internal error: {type(exc).__name__}")

    @app.get("/health")
    def health(request: Request) -> dict[str, Any]:
        # open for probes (no security declared); behind a key, only its holders learn the task names
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return {"status": "ok", **model.info()} if key_ok(token if scheme.lower() == "bearer" else None) \
            else {"status": "ok"}

    @app.get("/tasks", dependencies=guarded, responses=_responses(*auth))
    def tasks() -> dict[str, TaskInfo]:
        # no file paths: the server's file system layout is nobody's business
        return {name: {**info, "base": os.path.basename(str(info["base"])) if info.get("base") else info["base"]}
                for name, info in model.tasks_info().items()}

    examples = {name: {"summary": f"task {name}", "value": {"task": name, "inputs": [_EXAMPLE[(info["type"],
                info.get("inputs"))]]}} for name, info in list(model.tasks_info().items())[:8]} \
        if api_key is None else {}  # the schema is public: behind a key, task names are not

    @app.post("/predict", dependencies=guarded, response_model=PredictResponse,
              responses=_responses(400, *auth, 404, 413, 422, 500))
    def predict(req: PredictRequest = Body(openapi_examples=examples or None)):  # noqa: B008 - FastAPI's idiom
        if req.task not in model.tasks:
            return _error(404, "unknown_task", f"unknown task '{req.task}' (registered: "
                                               f"{', '.join(sorted(model.tasks)) or 'none'})")
        if len(req.inputs) > max_inputs:
            return _error(413, "too_many_inputs", f"{len(req.inputs)} inputs, at most {max_inputs} per request")
        inputs = [x.model_dump() if isinstance(x, ChoiceInput) else x for x in req.inputs]
        try:
            preds = model.predict(req.task, inputs, max_length=limit, truncate=False, max_tokens=max_tokens)
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
          threads: int | None = None, log_level: str = "info", device: str = "cpu", max_tokens: int = 16384,
          max_body_bytes: int = 8 << 20, api_key: str | None = None) -> None:
    """Load ``model_name`` once, register ``tasks`` (name → mask file or run dir), serve HTTP.

    Blocks until the server stops (Ctrl-C). Errors in the task files raise
    :class:`maskfit.MaskfileError` before the server starts. ``threads`` sets torch's
    intra-op threads (default: torch's choice); use the number of cores the server
    really owns, since an OpenMP region stalls when one of its threads is descheduled.
    ``device`` holds the base, the masks and the merged weights (``auto``, ``cpu``, ``cuda``...).
    The limits and ``api_key`` are :func:`create_app`'s.
    """
    import uvicorn

    from ..runtime import set_threads

    if not tasks:
        raise MaskfitError("no tasks to serve: give at least one NAME=PATH")
    set_threads(threads)
    mt = MultiTaskModel(model_name, strategy=strategy, cache_budget_bytes=cache_budget_bytes, device=device)
    for name, path in tasks.items():
        mt.register(name, path)
    app = create_app(mt, max_inputs=max_inputs, max_length=max_length, max_tokens=max_tokens,
                     max_body_bytes=max_body_bytes, api_key=api_key)
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who reaches the port can use it (set $%s)",
                    host, API_KEY_ENV)
    log.info("serving %d task(s) on base %s (%s) at http://%s:%d (strategy %s)", len(tasks), model_name, mt.device,
             host, port, strategy)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
