"""Where keygate is and how long to wait for it: `ClientSettings`, read from the environment variables a
deployment already sets for the `keygate` command line (KEYGATE_SERVER, KEYGATE_TLS*)."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..domain.errors import InvalidArgument
from ..tls import ClientTLS

SERVER_ENV = "KEYGATE_SERVER"
DEFAULT_SERVER = "127.0.0.1:50051"


@dataclass(frozen=True, slots=True)
class Retry:
    """Retries of a call that failed UNAVAILABLE or CANCELLED (keygate never ran it, so repeating it is safe:
    authorizer.RETRIED), within the call's one deadline: at most `attempts` tries, each after a full-jitter
    pause of up to `base` * 2**n seconds (at most `cap`), so that clients that lost keygate together do not
    return together."""

    attempts: int = 3
    base: float = 0.025
    cap: float = 0.25

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InvalidArgument("attempts", "must be at least 1")
        if not 0 <= self.base <= self.cap:
            raise InvalidArgument("base", "must be between 0 and cap")

    def pause(self, failed: int) -> float:
        """Seconds to wait after the `failed`-th failed attempt (1-based)."""
        return random.uniform(0, min(self.cap, self.base * 2 ** (failed - 1)))


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """`timeout` bounds a whole check, retries included (seconds)."""

    server: str = DEFAULT_SERVER
    tls: ClientTLS = field(default_factory=ClientTLS)
    timeout: float = 1.0
    retry: Retry = field(default_factory=Retry)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise InvalidArgument("timeout", "must be a positive number of seconds")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, timeout: float = 1.0,
                 retry: Retry | None = None) -> ClientSettings:
        """KEYGATE_SERVER (default 127.0.0.1:50051) and the KEYGATE_TLS* variables, as the CLI reads them."""
        env = os.environ if env is None else env
        return cls(server=env.get(SERVER_ENV) or DEFAULT_SERVER, tls=ClientTLS.from_env(env), timeout=timeout,
                   retry=retry or Retry())
