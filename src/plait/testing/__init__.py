"""Test helpers: a local OpenAI-compatible simulator server.

``Simulator`` serves ``POST /v1/chat/completions`` over real HTTP with
configurable latency, rate limits, injected faults and scripted replies, and
counts what it saw (``SimulatorStats``), so tests and benchmarks can judge a
client by what the server observed.
"""

from plait.testing._spawn import SpawnedSimulator
from plait.testing.simulator import Simulator
from plait.testing.stats import SimulatorStats

__all__ = ["Simulator", "SimulatorStats", "SpawnedSimulator"]
