"""Test helpers: in-process fakes and a local OpenAI-compatible simulator server.

Three levels of stand-in, from the fastest to the most faithful:

- :class:`FakeResources` replaces the resource manager: scripted replies and
  faults, latency, a record of every call and a peak-concurrency counter, for
  testing a pipeline's logic with no network.
- :class:`MockClient` replaces one endpoint's HTTP client behind a real
  :class:`~plait.resources.ResourceManager`, for testing limits, pools,
  usage, budgets and the cache.
- :class:`Simulator` serves ``POST /v1/chat/completions`` over real HTTP with
  configurable latency, rate limits, injected faults and scripted replies, and
  counts what it saw (:class:`SimulatorStats`), so tests and benchmarks can
  judge a client by what the server observed.
"""

from plait.testing._scripted import Handler, Reply, prompt_of
from plait.testing._spawn import SpawnedSimulator
from plait.testing._tool_calls import ToolCallReply
from plait.testing.fakes import FakeCall, FakeResources
from plait.testing.mock_client import MockClient
from plait.testing.simulator import Simulator
from plait.testing.stats import SimulatorStats

__all__ = [
    "FakeCall",
    "FakeResources",
    "Handler",
    "MockClient",
    "Reply",
    "Simulator",
    "SimulatorStats",
    "SpawnedSimulator",
    "ToolCallReply",
    "prompt_of",
]
