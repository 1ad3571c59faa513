"""The fuzz's server and its hypothesis profiles.

Profiles: `fuzz-quick` (the default, in `make test`: a bounded count that keeps the directory near a
minute) and `fuzz-long` (`make fuzz`, KEYGATE_FUZZ_PROFILE=fuzz-long). Only the tests here use them:
other property tests keep their own settings.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import asyncpg
import pytest
from hypothesis import HealthCheck, settings

from keygate import logs
from keygate.config import Settings

from ..integration.support import running
from .oracle import Fuzzed, Keys

if TYPE_CHECKING:
    from ..conftest import Postgres

_SLOW_IS_FINE = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                 HealthCheck.large_base_example]
settings.register_profile("fuzz-quick", max_examples=60, deadline=None, suppress_health_check=_SLOW_IS_FINE)
settings.register_profile("fuzz-long", max_examples=3000, deadline=None, suppress_health_check=_SLOW_IS_FINE)
PROFILE = os.environ.get("KEYGATE_FUZZ_PROFILE", "fuzz-quick")
FUZZ = settings(settings.get_profile(PROFILE))


@pytest.fixture
async def fuzzed(postgres: Postgres) -> AsyncIterator[Fuzzed]:
    """A keygate server on a fresh database, its log captured, holding the keys the fuzz calls with.

    After the test (all its examples), the invariants no fuzzed call may break are asserted.
    """
    stream = io.BytesIO()
    logs.configure(stream=stream)
    url = await postgres.fresh_database()
    db = await asyncpg.connect(url)
    try:
        async with running(Settings(listen="127.0.0.1:0"), url) as (app, client):
            fuzzed = Fuzzed(app, client.channel, db, stream, await Keys.make(client, db))
            fuzzed.log_lines()
            yield fuzzed
            await fuzzed.assert_invariants()
    finally:
        await db.close()
        logs.configure()
