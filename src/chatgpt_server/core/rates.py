"""How often something may happen per caller, in this process: a sliding window of recent times.

Used where an unauthenticated request makes this server call someone else (starting a device
sign-in calls the issuer), so nobody can make it hammer that service in their name.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque

MAX_CALLERS = 10_000  # past this many callers in the window, the oldest are forgotten


def caller_of(host: str) -> str:
    """A client address as the limits count it: an IPv6 one by its /64 (a single host is given a whole
    /64, and may pick any address in it), an IPv4-mapped one as its IPv4 address, others as they are."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return host


class Window:
    def __init__(self, limit: int, seconds: float):
        self.limit = limit
        self.seconds = seconds
        self._times: dict[str, deque[float]] = {}

    def take(self, caller: str, now: float | None = None) -> float:
        """0.0 if ``caller`` may go now (and it counts); else the seconds until it may."""
        now = time.monotonic() if now is None else now
        times = self._times.get(caller)
        if times is None:
            if len(self._times) >= MAX_CALLERS:
                self._forget(now)
            times = self._times[caller] = deque()
        while times and times[0] <= now - self.seconds:
            times.popleft()
        if len(times) >= self.limit:
            return times[0] + self.seconds - now
        times.append(now)
        return 0.0

    def _forget(self, now: float) -> None:
        for caller in [c for c, t in self._times.items() if not t or t[-1] <= now - self.seconds]:
            del self._times[caller]
        while len(self._times) >= MAX_CALLERS:  # all of them recent: the oldest entry goes
            del self._times[next(iter(self._times))]
