"""Check `vllm serve` argument lists with vLLM's own parser, without a GPU.

    <argcheck venv>/bin/python tools/vllm_argcheck.py < cases.jsonl > verdicts.jsonl
    <argcheck venv>/bin/python tools/vllm_argcheck.py --version

Input: one JSON object per line, {"id": "...", "args": ["<model>", "--flag", "value", ...]}
(the words after `serve`). Output: one JSON object per input line, {"id", "ok", "stage",
"error", "flags", "skipped", "warnings"}, then nothing else on stdout (vLLM's logging goes to stderr).

Run by `python -m disagglab check-flags` (make check-vllm-flags) under a venv that holds the
plan's vLLM version, installed CPU-only (tools/setup_vllm_argcheck.sh). The parser is built
the way `vllm serve` builds it: a top-level parser with a `serve` sub-parser passed to
`make_arg_parser` (its module moved: vllm.entrypoints.openai.cli_args in 0.15.x,
vllm.entrypoints.launchers.cli_args in 0.32, vllm.entrypoints.common.cli_args in 0.33).

Stages, each a real vLLM check:
  parse        argparse, which includes pydantic validation of JSON flags such as
               --kv-transfer-config (an invalid kv_role fails here)
  validate     validate_parsed_serve_args, what `vllm serve` runs right after parsing
  engine_args  AsyncEngineArgs.from_cli_args (does not load the model)
then vLLM's own configuration classes, built from those engine args the way
EngineArgs.create_engine_config builds them, as far as that is possible without the model's
config.json and without a GPU (each stage is named after the class that refused):
  KVTransferConfig  the connector class looked up in vLLM's KVConnectorFactory
                    ("Unsupported connector type"); the JSON itself is checked at parse
  SchedulerConfig   create_engine_config's own defaulting (EngineArgs methods), then the
                    class: max_num_batched_tokens vs max_num_seqs, vs max_model_len when
                    chunked prefill is off, partial-prefill limits, Field bounds
  CacheConfig       Field bounds (gpu_memory_utilization <= 1, swap_space >= 0, ...)
  ParallelConfig    its validators (data-parallel sizes and ranks, EPLB, executor backend)
What cannot run here, and why, is NOT_CHECKED (printed by --version); a case whose flags
put a config out of reach lists why under "skipped".

Without a GPU a CUDA wheel resolves no platform and building the parser fails in
DeviceConfig ("Failed to infer device type"), so the CPU platform is selected before the rest
of vLLM is imported. That changes a few platform-derived defaults, never which flags or
values are accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import re
import sys
from typing import Any

CLI_ARGS_MODULES = (
    "vllm.entrypoints.openai.cli_args",  # 0.15.x
    "vllm.entrypoints.launchers.cli_args",  # 0.32
    "vllm.entrypoints.common.cli_args",  # 0.33
)


def select_cpu_platform() -> None:
    import vllm.platforms as platforms
    from vllm.platforms.cpu import CpuPlatform

    platforms._current_platform = CpuPlatform()


def load_parser_api() -> tuple[Any, Any, str]:
    errors = []
    for name in CLI_ARGS_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if hasattr(module, "make_arg_parser"):
            return module.make_arg_parser, getattr(module, "validate_parsed_serve_args", None), name
    raise ImportError("vLLM's serve parser not found: " + "; ".join(errors))


class WarningCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def build_parser(make_arg_parser: Any) -> argparse.ArgumentParser:
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    top = FlexibleArgumentParser(prog="vllm")
    sub = top.add_subparsers(dest="subparser")
    serve = sub.add_parser("serve", usage="vllm serve [model_tag] [options]")
    make_arg_parser(serve)
    return top


def argparse_message(stderr: str) -> str:
    """argparse's `prog: error: ...` text (pydantic errors span lines), as one line."""
    _, sep, rest = stderr.partition(": error: ")
    if not sep:
        return stderr.strip().splitlines()[-1] if stderr.strip() else "rejected by the argument parser"
    lines = [line.strip() for line in rest.splitlines() if line.strip() and "errors.pydantic.dev" not in line]
    return " / ".join(lines)


# What the config stages cannot check on a CPU without the model's config.json, and why.
NOT_CHECKED = (
    "ModelConfig is not built: it needs the model's config.json from Hugging Face (offline here), so max_model_len "
    "against the model's limit, dtype, quantization, tokenizer and the runner type are not checked",
    "VllmConfig's cross-config checks (cudagraph sizes, hybrid KV cache manager vs the connector, speculative and "
    "LoRA limits) need the ModelConfig",
    "the scheduler limits take max_model_len from --max-model-len (without it vLLM derives it from config.json, and "
    "they are skipped) and take the model to be a decoder-only generative text model, as ModelConfig would find for "
    "Qwen2.5 (chunked prefill and prefix caching supported, not encoder-decoder, not multimodal)",
    "defaults for flags not given are vLLM's for a GPU under 70 GiB or an A100 (g5's A10G: max_num_seqs 256, "
    "max_num_batched_tokens 2048); an H100-class node defaults to 1024 and 8192",
    "CacheConfig: kv_cache_dtype 'auto' and the sliding window are resolved from config.json; swap space against "
    "host memory and KV cache against GPU memory are the node's",
    "ParallelConfig: the node's GPU count (world size vs available GPUs), heads divisible by the TP size "
    "(config.json), ray backends (no ray here) and multi-node / external-LB data parallel are not checked",
    "the KV connector class is looked up, not constructed: NIXL agents, the side channel and the contents of "
    "kv_connector_extra_config are used only when the server starts on the GPU",
)


class OfflineModel:
    """The ModelConfig attributes create_engine_config's defaulting reads, for a decoder-only text model."""

    runner_type = "generate"
    is_chunked_prefill_supported = True
    is_prefix_caching_supported = True
    is_encoder_decoder = False
    is_multimodal_model = False

    def __init__(self, max_model_len: int) -> None:
        self.max_model_len = max_model_len


@contextlib.contextmanager
def gpu_node_platform() -> Any:
    """vLLM's batch defaults as on a GPU node under 70 GiB (device memory unknown -> that branch), not the CPU's."""
    from vllm.platforms import current_platform

    def unknown_device() -> int:
        raise RuntimeError("no GPU here")

    current_platform.is_cpu = lambda: False
    current_platform.get_device_total_memory = unknown_device
    try:
        yield
    finally:
        del current_platform.is_cpu, current_platform.get_device_total_memory


def kv_transfer_stage(ea: Any) -> str | None:
    cfg = ea.kv_transfer_config
    if cfg is None or cfg.kv_connector is None:
        return None
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    try:
        KVConnectorFactory.get_connector_class(cfg)
    except ImportError as exc:
        return f"connector {cfg.kv_connector} not looked up: its module needs what this venv lacks ({exc})"
    return None


def scheduler_stage(ea: Any) -> str | None:
    from vllm.config import SchedulerConfig
    from vllm.usage.usage_lib import UsageContext

    if not isinstance(ea.max_model_len, int) or ea.max_model_len <= 0:
        return "SchedulerConfig skipped: no --max-model-len, vLLM takes it from the model's config.json"
    model = OfflineModel(ea.max_model_len)
    with gpu_node_platform():
        ea._set_default_max_num_seqs_and_batched_tokens_args(UsageContext.OPENAI_API_SERVER, model)
    SchedulerConfig(  # the arguments create_engine_config passes (vllm/engine/arg_utils.py)
        runner_type=model.runner_type, max_num_batched_tokens=ea.max_num_batched_tokens, max_num_seqs=ea.max_num_seqs,
        max_model_len=model.max_model_len, enable_chunked_prefill=ea.enable_chunked_prefill,
        disable_chunked_mm_input=ea.disable_chunked_mm_input, is_multimodal_model=model.is_multimodal_model,
        is_encoder_decoder=model.is_encoder_decoder, policy=ea.scheduling_policy, scheduler_cls=ea.scheduler_cls,
        max_num_partial_prefills=ea.max_num_partial_prefills, max_long_partial_prefills=ea.max_long_partial_prefills,
        long_prefill_token_threshold=ea.long_prefill_token_threshold,
        disable_hybrid_kv_cache_manager=ea.disable_hybrid_kv_cache_manager, async_scheduling=ea.async_scheduling,
        stream_interval=ea.stream_interval)
    return None


def cache_stage(ea: Any) -> str | None:
    from vllm.config import CacheConfig

    CacheConfig(  # as create_engine_config, less what config.json decides (cache dtype kept unresolved)
        block_size=ea.block_size, gpu_memory_utilization=ea.gpu_memory_utilization,
        kv_cache_memory_bytes=ea.kv_cache_memory_bytes, swap_space=ea.swap_space, cache_dtype=ea.kv_cache_dtype,
        is_attention_free=False, num_gpu_blocks_override=ea.num_gpu_blocks_override, sliding_window=None,
        enable_prefix_caching=ea.enable_prefix_caching, prefix_caching_hash_algo=ea.prefix_caching_hash_algo,
        cpu_offload_gb=ea.cpu_offload_gb, calculate_kv_scales=ea.calculate_kv_scales,
        kv_sharing_fast_prefill=ea.kv_sharing_fast_prefill, mamba_cache_dtype=ea.mamba_cache_dtype,
        mamba_ssm_cache_dtype=ea.mamba_ssm_cache_dtype, mamba_block_size=ea.mamba_block_size,
        mamba_cache_mode=ea.mamba_cache_mode, kv_offloading_size=ea.kv_offloading_size,
        kv_offloading_backend=ea.kv_offloading_backend)
    return None


def parallel_stage(ea: Any) -> str | None:
    from vllm.config import ParallelConfig

    if "ray" in (ea.distributed_executor_backend, ea.data_parallel_backend):
        return "ParallelConfig skipped: a ray backend needs ray, which the argcheck venv does not have"
    if ea.nnodes > 1 or ea.data_parallel_rank is not None or ea.data_parallel_size_local is not None \
            or ea.data_parallel_external_lb or ea.data_parallel_hybrid_lb:
        return "ParallelConfig skipped: multi-node or external-LB data parallel (create_engine_config infers ranks there)"
    ParallelConfig(  # create_engine_config's arguments for one node with internal data-parallel load balancing
        pipeline_parallel_size=ea.pipeline_parallel_size, tensor_parallel_size=ea.tensor_parallel_size,
        prefill_context_parallel_size=ea.prefill_context_parallel_size, data_parallel_size=ea.data_parallel_size,
        data_parallel_rank=0, data_parallel_external_lb=False, data_parallel_size_local=ea.data_parallel_size,
        master_addr=ea.master_addr, master_port=ea.master_port, nnodes=ea.nnodes, node_rank=ea.node_rank,
        data_parallel_master_ip=ea.master_addr or ParallelConfig.data_parallel_master_ip,
        data_parallel_rpc_port=ea.data_parallel_rpc_port or ParallelConfig.data_parallel_rpc_port,
        data_parallel_backend=ea.data_parallel_backend, data_parallel_hybrid_lb=False,
        enable_expert_parallel=ea.enable_expert_parallel, all2all_backend=ea.all2all_backend, enable_dbo=ea.enable_dbo,
        ubatch_size=ea.ubatch_size, dbo_decode_token_threshold=ea.dbo_decode_token_threshold,
        dbo_prefill_token_threshold=ea.dbo_prefill_token_threshold,
        disable_nccl_for_dp_synchronization=ea.disable_nccl_for_dp_synchronization, enable_eplb=ea.enable_eplb,
        eplb_config=ea.eplb_config, expert_placement_strategy=ea.expert_placement_strategy,
        max_parallel_loading_workers=ea.max_parallel_loading_workers,
        disable_custom_all_reduce=ea.disable_custom_all_reduce, ray_workers_use_nsight=ea.ray_workers_use_nsight,
        distributed_executor_backend=ea.distributed_executor_backend, worker_cls=ea.worker_cls,
        worker_extension_cls=ea.worker_extension_cls, decode_context_parallel_size=ea.decode_context_parallel_size,
        dcp_kv_cache_interleave_size=ea.dcp_kv_cache_interleave_size,
        cp_kv_cache_interleave_size=ea.cp_kv_cache_interleave_size)
    return None


# stage (the class that checks) -> (how it is built, the engine-arg fields that feed it)
CONFIG_STAGES = (
    ("KVTransferConfig", kv_transfer_stage, ("kv_transfer_config",)),
    ("SchedulerConfig", scheduler_stage, ("max_num_batched_tokens", "max_num_seqs", "max_model_len", "enable_chunked_prefill",
                                          "max_num_partial_prefills", "max_long_partial_prefills", "long_prefill_token_threshold",
                                          "scheduling_policy", "stream_interval")),
    ("CacheConfig", cache_stage, ("gpu_memory_utilization", "swap_space", "block_size", "kv_cache_dtype", "cpu_offload_gb",
                                  "kv_cache_memory_bytes", "num_gpu_blocks_override", "mamba_block_size", "kv_offloading_size")),
    ("ParallelConfig", parallel_stage, ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "enable_eplb",
                                        "enable_expert_parallel", "distributed_executor_backend", "decode_context_parallel_size")),
)


def exception_text(exc: Exception) -> str:
    """vLLM's message, one line: pydantic's `[type=..., input_value=...]` tail and its help links dropped."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and "errors.pydantic.dev" not in line]
    return f"{type(exc).__name__}: " + " / ".join(re.sub(r"\s*\[type=[^\]]*\]?.*$", "", line) for line in lines)


def flags_named(message: str, fields: tuple[str, ...], args: list[str]) -> list[str]:
    """The command-line flags (with the value given) of the fields vLLM's message names; `(default)` when not given."""
    out = []
    for name in fields:
        if not re.search(rf"\b{name}\b", message) and not (name == "kv_transfer_config" and "connector" in message):
            continue
        flag = "--" + name.replace("_", "-")
        given = [i for i, a in enumerate(args) if a in (flag, "--" + name) or a.startswith((flag + "=", f"--{name}="))]
        if not given:
            out.append(f"{flag} (default)")
        elif "=" in args[given[-1]]:
            out.append(args[given[-1]])
        else:
            out.append(" ".join(args[given[-1]:given[-1] + 2]))
    return out


def check_configs(ea: Any, args: list[str]) -> dict[str, Any]:
    with gpu_node_platform():  # create_engine_config's first defaulting step; it needs no max_model_len
        ea._set_default_chunked_prefill_and_prefix_caching_args(OfflineModel(ea.max_model_len))
    skipped = []
    for stage, build, fields in CONFIG_STAGES:
        try:
            note = build(ea)
        except Exception as exc:  # noqa: BLE001 - vLLM raises ValueError, pydantic ValidationError, AssertionError...
            message = exception_text(exc)
            return {"ok": False, "stage": stage, "error": message, "flags": flags_named(message, fields, args), "skipped": skipped}
        if note:
            skipped.append(note)
    return {"ok": True, "stage": "done", "error": None, "flags": [], "skipped": skipped}


def check(args: list[str], api: tuple[Any, Any, str], warnings: WarningCollector) -> dict[str, Any]:
    make_arg_parser, validate, _ = api
    warnings.messages.clear()
    with contextlib.suppress(Exception):
        from vllm.logger import _print_warning_once  # noqa: PLC0415 - each case reports its own warnings

        _print_warning_once.cache_clear()
    parser = build_parser(make_arg_parser)
    stage = "parse"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parsed = parser.parse_args(["serve", *args])
        stage = "validate"
        if validate is not None:
            validate(parsed)
        stage = "engine_args"
        from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: PLC0415

        engine_args = AsyncEngineArgs.from_cli_args(parsed)
    except SystemExit:
        return {"ok": False, "stage": stage, "error": argparse_message(stderr.getvalue()), "flags": [], "skipped": [],
                "warnings": list(warnings.messages)}
    except Exception as exc:  # noqa: BLE001 - vLLM raises ValueError, TypeError, pydantic errors...
        return {"ok": False, "stage": stage, "error": exception_text(exc), "flags": [], "skipped": [], "warnings": list(warnings.messages)}
    return {**check_configs(engine_args, args), "warnings": list(warnings.messages)}


def main(argv: list[str] | None = None) -> int:
    opts = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    opts.add_argument("--version", action="store_true", help="print the vLLM version and parser module as JSON")
    ns = opts.parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # vLLM logs to stdout; keep stdout for the verdicts
    try:
        select_cpu_platform()
        import vllm

        api = load_parser_api()
    except Exception as exc:  # noqa: BLE001 - a broken venv is reported, exit 4
        print(json.dumps({"ok": False, "stage": "import", "error": f"{type(exc).__name__}: {exc}"}), file=real_stdout)
        return 4
    if ns.version:
        print(json.dumps({"vllm_version": vllm.__version__, "parser_module": api[2], "not_checked": list(NOT_CHECKED)}),
              file=real_stdout, flush=True)
        return 0
    warnings = WarningCollector()
    logging.getLogger("vllm").addHandler(warnings)
    bad = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        verdict = {"id": case.get("id"), **check([str(a) for a in case["args"]], api, warnings)}
        bad += not verdict["ok"]
        print(json.dumps(verdict, sort_keys=True), file=real_stdout, flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
