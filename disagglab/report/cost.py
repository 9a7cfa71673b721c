"""What a million output tokens cost on a configuration, from the price table.

Throughput per GPU answers "how much hardware"; a buyer asks "how many dollars". A pattern
holds `gpus_used` GPUs of instances that cost `estimate.prices_usd_per_hour[instance_type]`
each and hold `gpu_count_per_node` GPUs, so one GPU-hour costs price / GPUs per instance and

    $ per million output tokens = $/h per GPU x gpus_used / (output tok/s x 3600) x 1e6.

GPUs are priced as a share of their instance, as a deployment that packs instances would pay.
A type missing from the table has no price: its cost is unknown, never $0 (a zero would
make the most expensive configuration look free). The table is the one of the configuration the
job runs with (Snakemake hands its merged config to every job), unless the caller passes one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from disagglab.plan.config import current_config
from disagglab.report.rows import Row, number

COST_KEY = "cost_usd_per_m_output_tokens"
PRICE_TABLE = "estimate.prices_usd_per_hour"


@dataclass(frozen=True)
class Pricing:
    """The price of the plan's instance type, and how many GPUs one instance holds."""

    instance_type: str
    usd_per_hour: float | None
    gpus_per_instance: int

    @property
    def usd_per_gpu_hour(self) -> float | None:
        if self.usd_per_hour is None or self.gpus_per_instance <= 0:
            return None
        return self.usd_per_hour / self.gpus_per_instance

    def unknown_reason(self) -> str:
        """Why there is no cost: the fix the reader needs, as the estimate says it."""
        return f"unknown (add {self.instance_type} to {PRICE_TABLE})"


def price_table(prices: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """The given prices, else `estimate.prices_usd_per_hour` of the configuration this job runs with."""
    if prices is not None:
        return prices
    return (current_config().get("estimate") or {}).get("prices_usd_per_hour") or {}


def pricing(infrastructure: Mapping[str, Any], prices: Mapping[str, Any] | None) -> Pricing:
    """The plan's instance type priced from the table; an absent or non-positive price is unknown."""
    itype = str(infrastructure.get("instance_type"))
    price = number((prices or {}).get(itype))
    gpus = infrastructure.get("gpu_count_per_node")
    return Pricing(itype, price if price is not None and price > 0 else None, gpus if isinstance(gpus, int) else 0)


def cost_per_million_output_tokens(usd_per_gpu_hour: float | None, gpus_used: Any, output_tokens_per_s: Any) -> float | None:
    """USD per 10^6 output tokens; None when the price, the GPU count or the throughput is missing or zero."""
    tput = number(output_tokens_per_s)
    if usd_per_gpu_hour is None or not isinstance(gpus_used, int) or gpus_used <= 0 or tput is None or tput <= 0:
        return None
    return usd_per_gpu_hour * gpus_used / (tput * 3600.0) * 1e6


def add_costs(rows: list[Row], price: Pricing) -> None:
    """Set every row's cost column (None where it cannot be known)."""
    for row in rows:
        row[COST_KEY] = cost_per_million_output_tokens(price.usd_per_gpu_hour, row.get("gpus_used"), row.get("output_throughput"))
