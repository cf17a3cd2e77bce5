from __future__ import annotations

from collections.abc import Iterator

import pytest

from tokenfuse.simulator.server import SimulatorThread


@pytest.fixture(scope="package")
def running() -> Iterator[SimulatorThread]:
    with SimulatorThread() as sim:
        yield sim


@pytest.fixture
def sim(running: SimulatorThread) -> SimulatorThread:
    """The shared simulator, with its record, cache and settings reset."""
    running.app.reset()
    return running
