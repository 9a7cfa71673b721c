"""The HTTP front end (OpenAI-compatible, vLLM-flavoured) bound to one engine.

It serves the routes of vLLM's OpenAI server that the pipeline uses, with
vLLM's validation and error answers, so that a run against the stand-in
exercises the same client, proxy and task code as a run against vLLM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import uuid
from typing import Any

from aiohttp import web

from .config import ServeConfig
from .engine import Engine, SimRequest, block_hash_chain
from .errors import RequestError
from .kv_transfer import KVTransfer
from .metrics import Stats, render_metrics
from .openai_api import error_body, error_response, full_body, prompt_units, requested_max_tokens, sse_frames
from .trace import TraceRecord, TraceStore, clocks, prompt_fingerprint, request_done, take_first_byte

LOG = logging.getLogger("vllm_sim")


class SimServer:
    """HTTP front end (OpenAI-compatible, vLLM-flavoured) bound to one Engine."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.engine = Engine(cfg, self.stats)
        self.kv = KVTransfer(cfg, cfg.kv, self.stats) if cfg.kv is not None else None
        self.engine_task: asyncio.Task[None] | None = None
        self.served_requests = 0
        self.background: list[asyncio.Task[None]] = []
        self.trace = TraceStore(cfg.trace_max_requests)

    def make_app(self) -> web.Application:
        """The routes vLLM's OpenAI server exposes that the pipeline uses (large bodies allowed)."""
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ping", self.health)
        app.router.add_post("/ping", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/sim/trace", self.sim_trace)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        return app

    # ---- simple routes
    async def health(self, request: web.Request) -> web.Response:
        """200 with an empty body while the engine loop lives, like vLLM's /health."""
        if self.engine_task is None or self.engine_task.done():
            return error_response("engine is dead", "EngineDeadError", 500)
        if self.cfg.fault.never_healthy:
            return error_response("DISAGG_SIM_FAULT never_healthy: this server never becomes healthy", "ServiceUnavailableError", 503)
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        """The model card; clients such as vllm bench read the model id from here."""
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.cfg.served_model_name,
                        "object": "model",
                        "created": int(self.stats.created),
                        "owned_by": "vllm",
                        "root": self.cfg.model,
                        "parent": None,
                        "max_model_len": self.cfg.max_model_len,
                    }
                ],
            }
        )

    async def version(self, request: web.Request) -> web.Response:
        """Marks the server as simulated and reports the KV transport actually in use."""
        return web.json_response(
            {
                "version": "sim",
                "simulated": True,
                "kv_transport": self.cfg.transport if self.kv is not None else None,
                "kv_role": self.cfg.kv.role if self.cfg.kv is not None else None,
                "engine_id": self.kv.engine_id if self.kv is not None else None,
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text exposition (content type of prometheus_client 0.0.4)."""
        return web.Response(
            text=self.render_metrics(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Version": "0.0.4"},
        )

    async def sim_trace(self, request: web.Request) -> web.Response:
        """Sim-only ground truth: per-request server-clock timings (docs/node-programs.md)."""
        request_id = request.query.get("request_id")
        clear = request.query.get("clear", "").lower() in ("1", "true", "yes")
        records = self.trace.select(request_id)
        now_mono, now_wall = clocks()
        body = {
            "object": "sim.trace",
            "enabled": self.trace.max_requests > 0,
            "max_requests": self.trace.max_requests,
            "stored": len(self.trace.records),
            "dropped": self.trace.dropped,
            "now_mono": now_mono,
            "now_wall": now_wall,
            "requests": [r.to_json() for r in records],
        }
        if clear:
            self.trace.remove(records)
        return web.Response(text=json.dumps(body), content_type="application/json")

    def render_metrics(self) -> str:
        """All metric families; NIXL ones only with a connector, as vLLM registers them."""
        engine = self.engine
        return render_metrics(self.stats, self.cfg.served_model_name, engine.num_running, engine.num_waiting, self.kv is not None)

    # ---- completions
    async def completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions."""
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        return await self._serve(request, chat=True)

    def _crash_if_due(self, ordinal: int) -> None:
        """DISAGG_SIM_FAULT crash_after=N: die abruptly during the (N+1)-th request."""
        if self.cfg.fault.crash_after is not None and ordinal == self.cfg.fault.crash_after + 1:
            LOG.error("DISAGG_SIM_FAULT: simulated crash while serving request #%d", ordinal)
            sys.stderr.flush()
            os._exit(70)

    async def _stream_faults(self, resp: web.StreamResponse, req: SimRequest, ordinal: int) -> None:
        """DISAGG_SIM_FAULT hang_mid_stream / malformed_sse, right after a stream's first token."""
        fault = self.cfg.fault
        if fault.malformed_sse_from is not None and ordinal >= fault.malformed_sse_from:
            LOG.error("DISAGG_SIM_FAULT: broken SSE data line in request #%d", ordinal)
            await resp.write(b'data: {"choices": [{"text": \n\n')  # the same bytes every time: errors group in the result
        if fault.hang_mid_stream is not None and ordinal == fault.hang_mid_stream:
            LOG.error("DISAGG_SIM_FAULT: request #%d stops sending tokens and holds its connection", ordinal)
            self.engine.abort(req)  # the engine moves on; this connection just never hears more
            await asyncio.Event().wait()  # until the client disconnects (the handler is cancelled)

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        """One request; the next bytes on its connection start the next one (lifecycle.FirstByteStamp)."""
        try:
            return await self._answer(request, chat)
        finally:
            request_done(request.transport)

    async def _answer(self, request: web.Request, chat: bool) -> web.StreamResponse:
        """Validate, run the NixlConnector per-request protocol, then stream or return the result."""
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        try:
            raw = await request.read()
            arrival_clocks = clocks()  # the whole request is in: the trace's arrival
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response("Invalid JSON body")
        checked = self._validate(body, chat)
        if isinstance(checked, web.Response):
            return checked
        units, max_tokens = checked
        n_prompt = len(units)
        stream = bool(body.get("stream", False))
        stream_options = body.get("stream_options") or {}
        include_usage = bool(stream_options.get("include_usage")) if isinstance(stream_options, dict) else False
        kv_in = body.get("kv_transfer_params") if self.kv is not None else None
        kv_in = kv_in if isinstance(kv_in, dict) else None
        remote_decode = kv_in is not None and kv_in.get("do_remote_decode") is True
        # Fault ignore_kv_params (a decode server only): prefill locally as if no KV were offered.
        remote_prefill = kv_in is not None and kv_in.get("do_remote_prefill") is True and not self.cfg.fault.ignore_kv_params

        base_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        resp_id = f"{'chatcmpl' if chat else 'cmpl'}-{base_id}"
        hashes = block_hash_chain(units, self.cfg.block_size) if self.cfg.enable_prefix_caching else []
        req = SimRequest(resp_id, n_prompt, max_tokens, hashes, arrival)
        trace = self.trace.start(base_id, "chat" if chat else "completions", stream, n_prompt, max_tokens, arrival_clocks)
        if trace is not None:
            trace.req = req
            trace.headers_mono = arrival
            trace.first_byte_mono, trace.first_byte_wall = take_first_byte(request.transport) or arrival_clocks
            trace.prompt_sha1 = prompt_fingerprint(body, chat)
        self.served_requests += 1
        ordinal = self.served_requests
        created = int(time.time())
        fault = self.cfg.fault
        if fault.http_500_from is not None and ordinal >= fault.http_500_from:
            LOG.error("DISAGG_SIM_FAULT: answering request #%d with HTTP 500", ordinal)
            self.stats.finished["error"] += 1
            if trace is not None:
                trace.finish("error")
            return error_response("DISAGG_SIM_FAULT http_500: simulated engine error", "InternalServerError", 500)

        resp: web.StreamResponse | None = None
        if stream:  # vLLM sends the SSE headers before any engine work
            resp = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
            resp.content_type = "text/event-stream"
            resp.charset = "utf-8"
            await resp.prepare(request)
        try:
            if remote_prefill:
                failed = await self._load_kv(request, resp, req, kv_in or {}, trace)
                if failed is not None:
                    return failed
            elif remote_decode:
                req.source = "remote_decode"
            if req.aborted:
                return resp or web.Response(status=499)
            self.engine.submit(req)
            if resp is not None:
                await self._stream(resp, req, chat, created, include_usage, ordinal, trace)
                result: web.StreamResponse = resp
            else:
                lease = remote_decode and not fault.no_kv_params
                result = await self._whole_answer(req, chat, created, ordinal, lease, trace)
            self._log_finished(req, loop.time())
            return result
        except ConnectionError:
            self.engine.abort(req)
            return resp or web.Response(status=499)
        finally:
            if not req.finished:
                self.engine.abort(req)
            if trace is not None:
                trace.finish("aborted" if req.aborted or not req.finished else "ok")

    def _validate(self, body: Any, chat: bool) -> web.Response | tuple[list[Any], int]:
        """The prompt's units and max_tokens of a request vLLM would accept, else vLLM's error answer."""
        if not isinstance(body, dict):
            return error_response("request body must be a JSON object")
        model = body.get("model")
        if model is not None and model not in (
            self.cfg.served_model_name,
            self.cfg.model,
        ):
            return error_response(f"The model `{model}` does not exist.", "NotFoundError", 404)
        try:
            units = prompt_units(body, chat)
            n_prompt = len(units)
            if n_prompt == 0:
                raise RequestError("The decoder prompt cannot be empty")
            max_tokens = requested_max_tokens(body, chat, n_prompt, self.cfg.max_model_len)
        except RequestError as exc:
            return error_response(exc.message, exc.err_type, exc.status)
        limit = self.cfg.max_model_len
        if n_prompt + max_tokens > limit:
            return error_response(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )
        return units, max_tokens

    async def _load_kv(
        self,
        request: web.Request,
        resp: web.StreamResponse | None,
        req: SimRequest,
        kv_in: dict[str, Any],
        trace: TraceRecord | None,
    ) -> web.StreamResponse | None:
        """D's side of a remote prefill: the blocks from P, else kv_load_failure_policy (an answer if it says fail)."""
        assert self.kv is not None
        failure = await self.kv.load(req, kv_in)
        if failure is None:
            req.needs_prefill = False
            req.source = "remote_prefill"
            self.engine.remember_blocks(req)
            self.stats.prompt_tokens += req.prompt_tokens
            self.stats.by_source["external_kv_transfer"] += req.prompt_tokens
        elif self.cfg.kv is not None and self.cfg.kv.failure_policy == "fail":
            req.finished = True
            self.stats.finished["error"] += 1
            if trace is not None:
                trace.finish("error")
            return await self._fail(request, resp, failure, req)
        else:
            req.source = "recompute"
        return None

    async def _whole_answer(
        self, req: SimRequest, chat: bool, created: int, ordinal: int, lease: bool, trace: TraceRecord | None
    ) -> web.StreamResponse:
        """Wait for every token, then answer in one body (P's carries the KV lease when ``lease``)."""
        await req.wait_beyond(0)
        self._crash_if_due(ordinal)
        while not req.finished and not req.aborted:
            await req.wait_beyond(req.generated)
        kv_out = self.kv.create_lease(req) if (lease and self.kv is not None) else None
        result = web.json_response(full_body(req, chat, created, self.cfg.served_model_name, kv_out))
        if trace is not None and req.finished:
            trace.body_written(req.generated)
        return result

    async def _fail(
        self,
        request: web.Request,
        resp: web.StreamResponse | None,
        message: str,
        req: SimRequest,
    ) -> web.StreamResponse:
        """End a request whose KV load failed under kv_load_failure_policy=fail."""
        LOG.info(
            "Finished request %s: kv=remote_prefill status=error (%s)",
            req.request_id,
            message,
        )
        if resp is None:
            return error_response(message, "InternalServerError", 500)
        payload = json.dumps(error_body(message, "InternalServerError", 500))
        await resp.write(f"data: {payload}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp

    async def _stream(
        self,
        resp: web.StreamResponse,
        req: SimRequest,
        chat: bool,
        created: int,
        include_usage: bool,
        ordinal: int,
        trace: TraceRecord | None = None,
    ) -> None:
        """Write each token as soon as the engine emits it; coalesce only if the writer fell behind.

        ``trace`` (if any) gets the instant each write is handed to the transport:
        aiohttp's ``write`` calls ``transport.write`` synchronously before it may
        await a drain, so the stamp taken just before it is that instant.
        """
        middle, last, role = sse_frames(req, chat, created, self.cfg.served_model_name)
        sent = 0
        while sent < req.max_tokens:
            await req.wait_beyond(sent)
            if req.aborted:
                return
            n = req.generated
            if n <= sent:
                continue
            k = n - sent
            data = middle * (k - 1) + (last if n >= req.max_tokens else middle)
            if sent == 0:
                data = role + data
            if trace is not None:
                trace.tokens_written(k)
            await resp.write(data)
            if sent == 0:
                self._crash_if_due(ordinal)
                await self._stream_faults(resp, req, ordinal)
            sent = n
        if include_usage:
            usage = {
                "id": req.request_id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": self.cfg.served_model_name,
                "choices": [],
                "usage": {
                    "prompt_tokens": req.prompt_tokens,
                    "total_tokens": req.prompt_tokens + req.generated,
                    "completion_tokens": req.generated,
                },
            }
            await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        if trace is not None:
            trace.finish("ok")

    def _log_finished(self, req: SimRequest, now: float) -> None:
        """One log line per request with its simulated timings, for debugging runs from logs."""

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.1f}"

        queue = None if req.t_scheduled is None else req.t_scheduled - req.arrival - req.xfer_s
        ttft = None if req.t_first_token is None else req.t_first_token - req.arrival
        LOG.info(
            "Finished request %s: status=%s kv=%s prompt_tokens=%d cached_tokens=%d "
            "completion_tokens=%d queue_ms=%s prefill_ms=%s kv_xfer_ms=%s ttft_ms=%s "
            "e2e_ms=%s",
            req.request_id,
            "aborted" if req.aborted else "ok",
            req.source,
            req.prompt_tokens,
            req.cached_tokens,
            req.generated,
            ms(queue),
            ms(req.prefill_s if req.needs_prefill else 0.0),
            ms(req.xfer_s),
            ms(ttft),
            ms(now - req.arrival),
        )
