"""plait.resources: endpoint configuration, pools, rate limits and usage.

``ResourceConfig`` says which endpoints each alias reaches; ``ResourceManager``
sends every LLM call through the right endpoint within its limits.
"""

from plait.resources.config import EndpointConfig, ResourceConfig
from plait.resources.manager import ResourceManager
from plait.resources.rate_limit import RateLimiter
from plait.resources.usage import AliasUsage, format_usage

__all__ = [
    "AliasUsage",
    "EndpointConfig",
    "RateLimiter",
    "ResourceConfig",
    "ResourceManager",
    "format_usage",
]
