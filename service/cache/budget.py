"""A token bucket: how many unknown keys a second are still confirmed in the database during a flood."""

from __future__ import annotations

_ROUNDING = 1e-9  # a request exactly 1/rate after the last must not be refused for a rounding error


class Budget:
    """At most `burst` at once and `rate` a second on average: `take` says whether one more fits.

    Time is passed in (monotonic seconds), so the caller's one clock read serves both it and the bucket.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a budget needs a positive rate and room for at least one")
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._rate)
        self._at = max(self._at, now)
        if self._tokens < 1 - _ROUNDING:
            return False
        self._tokens -= 1
        return True
