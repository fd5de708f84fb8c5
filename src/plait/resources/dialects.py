"""Which structured-output dialect an endpoint is sent, and learning it under ``auto``.

An endpoint set to ``auto`` is first asked in ``json_schema``. When it refuses
that form (:class:`~plait.errors.StructuredOutputRejectedError`), the same call
is sent again, at once, in the next dialect (``json_object``, then
``prompt``), and the dialect that followed the refusal is remembered for that
endpoint (its base URL and model) for the rest of the process: every later
call, in any run and from any manager, goes straight to it. A refusal is a
fact about the server, not a fault, so the resend is not a retry: it spends
no retry budget, takes no second rate permit and keeps the call's
concurrency slot.

Until a dialect has brought a reply back, one call at a time tries it and
the others wait for that call's outcome instead of all being refused at
once, so learning costs one refused request per refused dialect, not one
per call in flight.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

from plait.clients.base import ChatRequest, ChatResponse, StructuredDialect
from plait.errors import ResponseValidationError, StructuredOutputRejectedError
from plait.resources.config import EndpointConfig

__all__ = ["DialectChoice", "Send", "send_structured"]

Send = Callable[[ChatRequest], Awaitable[ChatResponse]]
"""How one request goes out: a client's ``complete``, or a token stream of it."""

_log = logging.getLogger("plait.resources")

_ORDER: tuple[StructuredDialect, ...] = ("json_schema", "json_object", "prompt")
_LEARNT: dict[tuple[str, str], StructuredDialect] = {}
_CONFIRMED: set[tuple[str, str]] = set()
_LOCK = threading.Lock()


class DialectChoice:
    """One endpoint's dialect: fixed by its config, or learnt under ``auto``."""

    __slots__ = ("_fixed", "_key", "_probe", "label")

    def __init__(self, config: EndpointConfig, label: str) -> None:
        setting = config.structured_output
        self._fixed: StructuredDialect | None = None if setting == "auto" else setting
        self._key = (config.base_url.rstrip("/"), config.model)
        self.label = label
        self._probe: asyncio.Future[None] | None = None

    def learns(self) -> bool:
        """Whether the dialect is ``auto``'s to find, rather than fixed by the config."""
        return self._fixed is None

    def settled(self) -> bool:
        """Whether the dialect is known to work: fixed, or one that brought a reply."""
        return self._fixed is not None or self._key in _CONFIRMED

    def current(self) -> StructuredDialect:
        """The dialect to send the next structured request in."""
        return self._fixed or _LEARNT.get(self._key, "json_schema")

    def after_refusal(self, refused: StructuredDialect) -> StructuredDialect | None:
        """The dialect to resend in once ``refused`` was refused, or None when there is none.

        Remembered for the endpoint; a call that was sent before another one
        learnt a later dialect jumps straight to that one.
        """
        if self._fixed is not None:
            return None
        with _LOCK:
            known = _LEARNT.get(self._key, "json_schema")
            if _ORDER.index(known) > _ORDER.index(refused):
                return known
            position = _ORDER.index(refused) + 1
            if position == len(_ORDER):
                return None
            following = _LEARNT[self._key] = _ORDER[position]
        _log.warning(
            "%s refused structured output as %s; using %s for this endpoint from now on "
            "(set its structured_output to skip the refused request)",
            self.label,
            refused,
            following,
        )
        return following

    def confirm(self, dialect: StructuredDialect) -> None:
        """``dialect`` brought a reply back (valid or not), so the server speaks it."""
        if self._fixed is None:
            with _LOCK:
                if _LEARNT.get(self._key, "json_schema") == dialect:
                    _CONFIRMED.add(self._key)

    async def turn(self) -> asyncio.Future[None] | None:
        """Wait until this call may send; the future returned makes it the one trying.

        None once the dialect is settled. A caller given the future must pass
        it to :meth:`end_turn` whatever happens to its request.
        """
        loop = asyncio.get_running_loop()
        while not self.settled():
            probe = self._probe
            if probe is None or probe.done() or probe.get_loop() is not loop:
                probe = self._probe = loop.create_future()
                return probe
            # Shielded: a waiter that is cancelled must not cancel the trial.
            await asyncio.shield(probe)
        return None

    def end_turn(self, probe: asyncio.Future[None]) -> None:
        """The trial is over, however it went: wake the calls waiting for it."""
        if not probe.done():
            probe.set_result(None)
        if self._probe is probe:
            self._probe = None


async def send_structured(send: Send, request: ChatRequest, choice: DialectChoice) -> ChatResponse:
    """Send a structured ``request`` in the endpoint's dialect, falling back on a refusal.

    Raises:
        StructuredOutputRejectedError: the endpoint refused the form and its
            dialect is fixed (or none is left); the message names the
            setting that would work.
    """
    while True:
        probe = None if choice.settled() else await choice.turn()
        dialect = request.structured_output = choice.current()
        try:
            response = await send(request)
        except StructuredOutputRejectedError as exc:
            following = choice.after_refusal(dialect)
            if following is None:
                advice = (
                    "no structured-output form is left to try"
                    if choice.learns()
                    else "set the endpoint's structured_output to the form it accepts: "
                    "'json_object' (llama-cpp-python), 'prompt' (any server), or 'auto' "
                    "to find out"
                )
                raise StructuredOutputRejectedError(
                    f"{choice.label} refused structured output sent as {dialect!r}: {exc}; "
                    + advice,
                    status_code=exc.status_code,
                ) from exc
        except ResponseValidationError:
            choice.confirm(dialect)
            raise
        else:
            choice.confirm(dialect)
            return response
        finally:
            if probe is not None:
                choice.end_turn(probe)
