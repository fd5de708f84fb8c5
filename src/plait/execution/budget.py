"""Spending limits for one call: total tokens and total cost.

A budget is charged with every reply's tokens (and its cost, from the
endpoint's prices) as replies arrive. Once a limit is crossed the run stops
sending: nodes not yet sent are dropped, requests already on the wire are
allowed to finish (their cost is already incurred, and their results are
worth keeping), and the call ends with :class:`BudgetExceededError`. With
``checkpoint_dir`` everything finished is on disk, so calling again with a
higher limit carries on from there; each call has its own budget.
"""

from __future__ import annotations

from plait.errors import BudgetExceededError


class Budget:
    """The limits of one call and what it has spent so far (cache hits are free)."""

    __slots__ = ("cost", "exceeded", "max_cost", "max_tokens", "replies", "tokens")

    def __init__(self, max_tokens: int | None, max_cost: float | None) -> None:
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.tokens = 0
        self.cost = 0.0
        self.replies = 0
        self.exceeded = False

    def charge(self, tokens: int, cost: float | None) -> bool:
        """Book one reply; True exactly once, when this reply crosses a limit."""
        self.replies += 1
        self.tokens += tokens
        if cost:
            self.cost += cost
        if self.exceeded:
            return False
        over_tokens = self.max_tokens is not None and self.tokens > self.max_tokens
        over_cost = self.max_cost is not None and self.cost > self.max_cost
        self.exceeded = over_tokens or over_cost
        return self.exceeded

    def spent(self) -> str:
        """What was spent, in the units of the limits that are set."""
        parts = [f"{self.tokens:,} tokens"]
        if self.max_cost is not None:
            parts.append(f"${self.cost:.4f}")
        return " and ".join(parts)

    def limits(self) -> str:
        parts = []
        if self.max_tokens is not None:
            parts.append(f"max_tokens_total={self.max_tokens:,}")
        if self.max_cost is not None:
            parts.append(f"max_cost={self.max_cost:g}")
        return ", ".join(parts)

    def error(
        self, *, finished: int, total: int | None, checkpoint_dir: str | None
    ) -> BudgetExceededError:
        """The error that ends a stopped call, saying how far it got and how to go on."""
        of = f" of {total}" if total is not None else ""
        message = (
            f"budget exceeded ({self.limits()}): {self.spent()} spent in {self.replies} "
            f"replies; stopped with {finished}{of} inputs finished (requests already sent "
            "were allowed to finish, nothing new was sent)"
        )
        if checkpoint_dir is not None:
            message += (
                f". Finished work is saved in the checkpoint at {checkpoint_dir}: call again "
                "with the same checkpoint_dir and a higher limit to continue from there."
            )
        else:
            message += (
                ". Set checkpoint_dir to keep finished work, so a call with a higher limit "
                "continues instead of starting over."
            )
        return BudgetExceededError(message)
