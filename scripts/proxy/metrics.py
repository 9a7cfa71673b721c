"""``GET /metrics`` in Prometheus text format, with no client library on the nodes."""

from __future__ import annotations

import bisect
import collections
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .relay import Proxy

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


def _labels(**labels: str) -> str:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


class Histogram:
    """A Prometheus histogram; observe() is a bisect and three additions."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            out.append(f'{self.name}_bucket{{le="{bound:g}"}} {cumulative}')
        out.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{self.name}_sum {self.sum!r}")
        out.append(f"{self.name}_count {self.count}")
        return out


class Metrics:
    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()
        self.kv_missing = 0
        self.prefill = Histogram("disagg_proxy_prefill_seconds", "Time of the P request (send to the end of P's answer).")
        self.first_byte = Histogram(
            "disagg_proxy_decode_first_byte_seconds", "Time from sending the request to D until D's first body bytes."
        )
        self.total = Histogram(
            "disagg_proxy_request_seconds", "Time from the start of a completion's handling to the end of the relayed answer (requests D answered)."
        )

    def render(self, proxy: Proxy) -> str:
        out = [
            "# HELP disagg_proxy_requests_total Requests answered, by route and HTTP status (499: client left first).",
            "# TYPE disagg_proxy_requests_total counter",
        ]
        out += [f"disagg_proxy_requests_total{_labels(route=r, status=s)} {n}" for (r, s), n in sorted(self.requests.items())]
        out += [
            "# HELP disagg_proxy_errors_total Failures by role (prefill, decode, client, proxy) and kind.",
            "# TYPE disagg_proxy_errors_total counter",
        ]
        out += [f"disagg_proxy_errors_total{_labels(role=r, kind=k)} {n}" for (r, k), n in sorted(self.errors.items())]
        for histogram in (self.prefill, self.first_byte, self.total):
            out += histogram.render()
        out += [
            "# HELP disagg_proxy_in_flight_requests Completions being handled now.",
            "# TYPE disagg_proxy_in_flight_requests gauge",
            f"disagg_proxy_in_flight_requests {proxy.in_flight}",
            "# HELP disagg_proxy_backend_healthy 1 if the backend is in the round robin, 0 if ejected.",
            "# TYPE disagg_proxy_backend_healthy gauge",
        ]
        states = proxy.states
        out += [f"disagg_proxy_backend_healthy{_labels(role=s.backend.role, backend=s.backend.url)} {int(s.healthy)}" for s in states]
        out += [
            "# HELP disagg_proxy_backend_ejections_total Times the backend was taken out of the round robin.",
            "# TYPE disagg_proxy_backend_ejections_total counter",
        ]
        out += [f"disagg_proxy_backend_ejections_total{_labels(role=s.backend.role, backend=s.backend.url)} {s.ejections}" for s in states]
        out += [
            "# HELP disagg_proxy_kv_transfer_params_missing_total P answers without kv_transfer_params (D re-prefills).",
            "# TYPE disagg_proxy_kv_transfer_params_missing_total counter",
            f"disagg_proxy_kv_transfer_params_missing_total {self.kv_missing}",
        ]
        return "\n".join(out) + "\n"
