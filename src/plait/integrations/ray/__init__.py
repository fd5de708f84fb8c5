"""Run plait modules over Ray Data, with one rate budget shared by every worker.

Install with ``pip install plait[ray]``. ``PlaitMapper`` is a callable class for
``Dataset.map_batches``: each Ray worker builds the module once and runs
plait's async engine over each batch it receives. ``RateBudget`` is a Ray actor
that hands out request and token permits, so N workers together respect one
endpoint's limits instead of each spending the whole budget.
"""

from plait.integrations.ray.budget import RateBudget, SharedBudgetResources, create_budget
from plait.integrations.ray.mapper import PlaitMapper, map_dataset

__all__ = ["PlaitMapper", "RateBudget", "SharedBudgetResources", "create_budget", "map_dataset"]
