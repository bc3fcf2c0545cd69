"""The one backoff formula: exponential, capped, with jitter below the nominal delay."""

from __future__ import annotations

import random


def exponential_backoff(attempt: int, *, base: float, cap: float, jitter: float, floor: float = 0.0) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry): `base` doubled per
    earlier attempt, capped at `cap`, then scaled by a random factor in [1 - jitter, 1] so a
    burst of failures does not retry in lockstep; never below `floor`."""
    nominal = min(cap, base * 2 ** max(0, min(attempt - 1, 32)))
    return max(floor, nominal * random.uniform(1.0 - jitter, 1.0))
