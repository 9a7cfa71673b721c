"""Did the prefix cache hit as often as the workload says it should?

The workload client reports two rates: what an ideal cache would hit over the requests it
sent, and what the servers' own counters say they hit. A large gap means the measurement
is not of the workload the plan describes (a cache too small, requests spread over
instances with separate caches, or counters that do not count), so the result says so.
"""

from __future__ import annotations

from typing import Any

# Absolute difference of hit rates (0..1) above which the result flags the gap. Concurrent
# first uses of a prefix all miss, which an ideal sequential cache does not: a few
# percentage points are expected, ten are not.
GAP_TOLERANCE = 0.10


def prefix_cache_check(workload: dict[str, Any], prefix_cache: bool) -> dict[str, Any]:
    """Expected and measured hit rate, their gap, and whether it is flagged (with why)."""
    expected = workload["expected"]["prefix_hit_rate"] if prefix_cache else 0.0
    measured = workload["measured"]["hit_rate"]
    if measured is None:
        flagged = prefix_cache
        note = ("the servers' /metrics show no prefix-cache queries: the hit rate is unknown" if prefix_cache
                else "prefix caching is off: nothing to hit")
        return {"expected_hit_rate": expected, "measured_hit_rate": None, "gap": None,
                "tolerance": GAP_TOLERANCE, "flagged": flagged, "note": note}
    gap = measured - expected
    flagged = abs(gap) > GAP_TOLERANCE
    note = (f"measured hit rate {measured:.3f} is {abs(gap):.3f} {'above' if gap > 0 else 'below'} the expected {expected:.3f}"
            if flagged else f"measured {measured:.3f} within {GAP_TOLERANCE} of the expected {expected:.3f}")
    return {"expected_hit_rate": expected, "measured_hit_rate": measured, "gap": gap,
            "tolerance": GAP_TOLERANCE, "flagged": flagged, "note": note}
