"""The simulated NixlConnector: P's leases and side channel, D's fetch over a shared link.

The consumer really fetches from the producer's side channel, so a pipeline
that points D at the wrong P, or lets P's blocks expire, fails as with vLLM
(docs/node-programs.md, "KV transfer").
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import KVConfig, ServeConfig
from .engine import SimRequest
from .errors import TIMEOUT_ERRORS
from .metrics import Stats
from .node_link import NodeLink

LOG = logging.getLogger("vllm_sim")

SIDE_CHANNEL_TIMEOUT_S = 5.0  # vLLM sets RCVTIMEO=5000 ms on its handshake socket
EXPIRED_MEMORY = 10_000  # remembered expired request ids (after-expiry counter)


@dataclass
class Lease:
    """Blocks P keeps after a do_remote_decode request until D fetches them."""

    request_id: str
    block_ids: list[int]
    num_tokens: int
    expires_at: float


class KVTransfer:
    """Simulated NixlConnector: P-side leases + side channel, D-side fetch + link."""

    def __init__(self, cfg: ServeConfig, kv: KVConfig, stats: Stats) -> None:
        self.cfg = cfg
        self.kv = kv
        self.stats = stats
        self.engine_id = str(uuid.uuid4())
        self.leases: dict[str, Lease] = {}
        self.expired_ids: OrderedDict[str, None] = OrderedDict()
        self._next_block = 0
        self.link = NodeLink(Path(cfg.node_link) if cfg.node_link else None)
        self.server: asyncio.AbstractServer | None = None

    # ---- producer side
    def create_lease(self, req: SimRequest) -> dict[str, Any]:
        """Keep the request's blocks and return the kv_transfer_params P answers with."""
        n_blocks = -(-req.prompt_tokens // self.cfg.block_size)
        block_ids = list(range(self._next_block, self._next_block + n_blocks))
        self._next_block += n_blocks
        remote_id = f"{req.request_id}-0-{uuid.uuid4().hex[:8]}"
        now = asyncio.get_running_loop().time()
        self.leases[remote_id] = Lease(remote_id, block_ids, req.prompt_tokens, now + self.cfg.profile.kv_lease_s)
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": block_ids,
            "remote_engine_id": self.engine_id,
            "remote_request_id": remote_id,
            "remote_host": self.cfg.side_host,
            "remote_port": self.cfg.side_port,
            "tp_size": self.cfg.tensor_parallel_size,
        }

    def _expire(self, lease: Lease) -> None:
        self.leases.pop(lease.request_id, None)
        self.stats.nixl_expired += 1
        self.expired_ids[lease.request_id] = None
        while len(self.expired_ids) > EXPIRED_MEMORY:
            self.expired_ids.popitem(last=False)
        LOG.warning(
            "KV blocks of request %s expired after %.1f s without being read",
            lease.request_id,
            self.cfg.profile.kv_lease_s,
        )

    async def sweep_leases(self) -> None:
        """Expire leases D never fetched (vLLM: nixl_num_kv_expired_reqs on P)."""
        interval = max(0.05, min(1.0, self.cfg.profile.kv_lease_s / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for lease in [lz for lz in self.leases.values() if lz.expires_at <= now]:
                self._expire(lease)

    def handle_message(self, msg: Any) -> dict[str, Any]:
        """Answer one side-channel request (producer role)."""

        def error(code: str, message: str) -> dict[str, Any]:
            return {"ok": False, "error": code, "message": message}

        if not isinstance(msg, dict):
            return error("bad_request", "expected a JSON object")
        op = msg.get("op")
        if op == "ping":
            return {
                "ok": True,
                "engine_id": self.engine_id,
                "block_size": self.cfg.block_size,
            }
        if op != "fetch":
            return error("bad_request", f"unknown op {op!r}")
        if msg.get("remote_engine_id") != self.engine_id:
            return error(
                "engine_id_mismatch",
                f"Remote NIXL agent engine ID mismatch. Expected {msg.get('remote_engine_id')}, received {self.engine_id}.",
            )
        block_size = msg.get("block_size")
        if block_size is not None and block_size != self.cfg.block_size:
            return error(
                "block_size_mismatch",
                f"block size mismatch: producer {self.cfg.block_size}, consumer {block_size}",
            )
        rid = msg.get("remote_request_id")
        lease = self.leases.get(rid) if isinstance(rid, str) else None
        if lease is not None and lease.expires_at <= asyncio.get_running_loop().time():
            self._expire(lease)
            lease = None
        if lease is None:
            if isinstance(rid, str) and rid in self.expired_ids:
                self.stats.nixl_after_expiry += 1
                return error(
                    "expired",
                    f"KV blocks of request {rid} expired (lease {self.cfg.profile.kv_lease_s} s)",
                )
            return error("unknown_request", f"no KV blocks held for request {rid!r}")
        wanted = msg.get("remote_block_ids")
        if wanted is not None and list(wanted) != lease.block_ids:
            return error(
                "block_mismatch",
                f"remote_block_ids do not match the blocks of request {rid}",
            )
        del self.leases[rid]
        return {
            "ok": True,
            "engine_id": self.engine_id,
            "remote_request_id": rid,
            "num_tokens": lease.num_tokens,
            "num_blocks": len(lease.block_ids),
            "bytes": lease.num_tokens * self.cfg.profile.kv_bytes_per_token,
            "block_size": self.cfg.block_size,
        }

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One side-channel connection: newline-delimited JSON request/answer pairs."""
        try:
            while True:
                line = await asyncio.wait_for(reader.readline(), timeout=60.0)
                if not line:
                    break
                try:
                    answer = self.handle_message(json.loads(line))
                except json.JSONDecodeError:
                    answer = {
                        "ok": False,
                        "error": "bad_request",
                        "message": "invalid JSON",
                    }
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (*TIMEOUT_ERRORS, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def start(self) -> None:
        """Bind the side channel; a port clash fails start-up like vLLM's ZMQ 'Address already in use'."""
        self.server = await asyncio.start_server(self.serve_connection, self.cfg.side_host, self.cfg.side_port)

    # ---- consumer side
    async def _fetch(self, params: dict[str, Any]) -> dict[str, Any]:
        """Ask P's side channel for the blocks named in ``params``; raise on any failure."""
        host, port = params.get("remote_host"), params.get("remote_port")
        if not host or port is None:
            raise RuntimeError("kv_transfer_params lack remote_host/remote_port")
        msg = {
            "op": "fetch",
            "v": 1,
            "remote_engine_id": params.get("remote_engine_id"),
            "remote_request_id": params.get("remote_request_id"),
            "remote_block_ids": params.get("remote_block_ids"),
            "block_size": self.cfg.block_size,
            "requester_engine_id": self.engine_id,
        }
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(str(host), int(port)),
            timeout=SIDE_CHANNEL_TIMEOUT_S,
        )
        try:
            writer.write(json.dumps(msg).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout=SIDE_CHANNEL_TIMEOUT_S)
        finally:
            writer.close()
        if not line:
            raise RuntimeError(f"side channel {host}:{port} closed without answering")
        answer = json.loads(line)
        if not isinstance(answer, dict) or not answer.get("ok"):
            code = answer.get("error") if isinstance(answer, dict) else "bad_answer"
            text = answer.get("message") if isinstance(answer, dict) else str(answer)
            raise RuntimeError(f"{code}: {text}")
        return answer

    async def load(self, req: SimRequest, params: dict[str, Any]) -> str | None:
        """Fetch P's blocks and wait the simulated transfer; return an error text or None."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            answer = await self._fetch(params)
            num_tokens = int(answer["num_tokens"])
            num_blocks = int(answer.get("num_blocks", 0))
        except (
            *TIMEOUT_ERRORS,
            OSError,
            RuntimeError,
            ValueError,
            TypeError,
            KeyError,
        ) as exc:
            self.stats.nixl_failed_transfers += 1
            text = f"KV load from {params.get('remote_host')}:{params.get('remote_port')} failed: {exc or type(exc).__name__}"
            LOG.warning(
                "Request %s: %s (kv_load_failure_policy=%s)",
                req.request_id,
                text,
                self.kv.failure_policy,
            )
            return text
        if num_tokens != req.prompt_tokens:
            LOG.warning(
                "Request %s: producer held %d tokens, prompt has %d",
                req.request_id,
                num_tokens,
                req.prompt_tokens,
            )
        profile = self.cfg.profile
        transport = self.cfg.transport
        nbytes = num_tokens * profile.kv_bytes_per_token
        overhead = profile.transfer_overhead_ms[transport] / 1000.0 * profile.time_scale
        wire = nbytes * 8 / (profile.bandwidth_gbps[transport] * 1e9) * profile.time_scale
        now = loop.time()
        done = self.link.reserve(now + overhead, wire)  # the node's link: shared with its other servers
        await asyncio.sleep(max(done - loop.time(), 0))
        xfer_s = done - now
        self.stats.xfer_time.observe(xfer_s)
        self.stats.post_time.observe(overhead)
        self.stats.xfer_bytes.observe(nbytes)
        self.stats.descriptors.observe(num_blocks)
        req.xfer_s = loop.time() - t0
        return None
