"""An opt-in, on-disk cache of chat replies, keyed by the full request.

Re-running a pipeline while developing it, or re-running a batch after
changing one stage, should not pay again for calls whose request is
byte-for-byte the same. The key is a hash of everything that shapes the
reply: the endpoint's model, the messages, temperature, max tokens, the
response schema and every extra request option. Nothing about the endpoint's
address or credentials is part of the key or the stored row, so the file
holds no secret.

Repeated samples. At a temperature above 0 (or the server's default) and
without a seed, asking the same thing three times in one run means wanting
three samples, not one answer thrice. So a run's handle (:meth:`for_run`)
numbers the samples of each request it serves or stores, and keys the second
and later apart; a rerun asks in the same way and gets the same samples
back. A deterministic request (temperature 0, or a seed) has one key. A
run's handles on every file it uses, its ``cache=`` setting's and those
endpoints name themselves, are one :class:`RunCache`, so both number alike.

The file and its writer are :mod:`plait.storage.cache_store`. Handles on one
file are shared per process (:func:`open_cache`), so every run sees replies
another run has not yet committed; a run waits for its replies to be on disk
before it returns (:func:`plait.storage.cache_store.flush_all`), so a process killed after a
call returned has lost none of them. Any number of processes may share a
cache file.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path
from typing import Any

from plait.clients.base import ChatRequest, ChatResponse
from plait.clients.structured import cached_response_format_payload, validate_reply
from plait.errors import ResponseValidationError
from plait.storage.cache_store import FILENAME, ReplyStore, Row
from plait.storage.codec import content_hash, require_unicode, surrogate_error


def request_key(request: ChatRequest) -> str:
    """The cache key of ``request``: a hash of everything that shapes the reply.

    Raises:
        UnencodableError: the request holds text that is not Unicode (a lone
            surrogate), so no reply to it could be stored under it.
    """
    response_format = (
        cached_response_format_payload(request.response_format)
        if request.response_format is not None
        else None
    )
    payload = [
        request.model,
        request.messages,
        request.temperature,
        request.max_tokens,
        response_format,
        request.options,
        request.tools,
        request.tool_choice,
    ]
    try:
        return content_hash(payload, algorithm="sha256", default=repr)
    except UnicodeEncodeError as error:
        raise surrogate_error({"messages": request.messages}, error) from None


def deterministic(request: ChatRequest) -> bool:
    """Whether asking again must give the same reply: temperature 0, or a seed."""
    return request.temperature == 0 or request.options.get("seed") is not None


class ResponseCache:
    """Chat replies stored in one SQLite file, shared by runs and processes.

    ``get`` and ``put`` are safe to call from any thread. Call :meth:`flush`
    to be sure everything put so far is on disk (runs do this when they end).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _file_for(Path(path))
        self._store = ReplyStore(self.path)
        # On a run's handle only: the sample numbers used per request key (a
        # bit each), and the base key and number behind each numbered key.
        self._taken: dict[str, int] | None = None
        self._samples: dict[str, tuple[str, int]] = {}

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    @property
    def closed(self) -> bool:
        return self._store.closed

    def for_run(self) -> ResponseCache:
        """A handle on the same file that numbers one run's repeated samples."""
        view = copy.copy(self)
        view._taken = {}
        view._samples = {}
        return view

    def key(self, request: ChatRequest) -> str:
        """The key ``request`` is looked up under by this handle.

        On a run's handle a non-deterministic request asks for the first
        sample of it this run has not used yet: served by a hit, or stored by
        :meth:`put`. A call that fails uses up nothing, so its retry asks for
        the same sample again.
        """
        base = request_key(request)
        taken = self._taken
        if taken is None or deterministic(request):
            return base
        index = _lowest_free(taken.get(base, 0))
        if index == 0:
            return base
        key = _sample_key(base, index)
        self._samples[key] = (base, index)
        return key

    def get(self, request: ChatRequest, key: str | None = None) -> ChatResponse | None:
        """The stored reply to ``request``, or None.

        A stored structured reply that no longer validates against the
        request's ``response_format`` (the model class changed) is a miss.
        """
        key = key or request_key(request)
        row = self._store.row(key)
        if row is None:
            return None
        model, content, finish_reason, input_tokens, output_tokens = row
        parsed = None
        if request.response_format is not None:
            try:
                parsed = validate_reply(content, request.response_format)
            except ResponseValidationError:
                return None
        if self._taken is not None and not deterministic(request):
            self._take(*self._samples.pop(key, (key, 0)))
        return ChatResponse(
            content=content,
            model=model,
            finish_reason=finish_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            parsed=parsed,
        )

    def put(self, request: ChatRequest, response: ChatResponse, key: str | None = None) -> None:
        """Store ``response`` as the reply to ``request``.

        On a run's handle a sample goes under the first number still free
        when it arrives: twins that asked at once for the same sample, and
        both missed, are stored as two samples, not one over the other.

        A reply that carries tool calls is not stored: the store keeps a
        reply's text, and a tool-call turn served without its calls would be
        a wrong answer. Such turns are replayed from a checkpoint instead.

        Raises:
            UnencodableError: the reply holds text that is not Unicode, so it
                cannot be stored (the call that got it fails with this).
        """
        if response.tool_calls:
            return
        for field, text in (("content", response.content), ("model", response.model)):
            require_unicode(text, text, f"the reply's {field} (not cached)")
        key = key or request_key(request)
        if self._taken is not None and not deterministic(request):
            base, _ = self._samples.pop(key, (key, 0))
            index = _lowest_free(self._taken.get(base, 0))
            self._take(base, index)
            key = base if index == 0 else _sample_key(base, index)
        row: Row = (
            key,
            response.model,
            response.content,
            response.finish_reason,
            response.input_tokens,
            response.output_tokens,
            time.time(),
        )
        self._store.put(row)

    def _take(self, base: str, index: int) -> None:
        assert self._taken is not None
        self._taken[base] = self._taken.get(base, 0) | (1 << index)

    def flush(self) -> None:
        """Block until every reply put so far is committed.

        Raises:
            WriterError: the cache could not be written. The cache is closed
                then, releasing its thread and file handles; :func:`open_cache`
                opens the file afresh next time.
        """
        self._store.flush()

    def __len__(self) -> int:
        return self._store.count()

    def clear(self) -> None:
        """Forget every stored reply."""
        self._store.clear()

    def close(self) -> None:
        try:
            self._store.close()
        finally:
            with _registry_lock:
                if _open_caches.get(self.path) is self:
                    del _open_caches[self.path]


class RunCache:
    """One run's handles on every cache file it uses, each numbering its samples.

    A run reaches replies through the file its ``cache=`` setting names
    (:attr:`default`) and through the files endpoints name in their own
    ``cache`` setting. Repeated samples must be kept apart in all of them
    alike, so the resource manager asks this object for the handle of
    whichever file an endpoint uses, instead of using the shared handle that
    numbers nothing.
    """

    __slots__ = ("_handles", "default")

    def __init__(self, default: ResponseCache | None = None) -> None:
        self._handles: dict[Path, ResponseCache] = {}
        self.default = None if default is None else self.handle(default)

    def handle(self, cache: ResponseCache) -> ResponseCache:
        """This run's handle on ``cache``'s file (made once per file)."""
        found = self._handles.get(cache.path)
        if found is None or found.closed:
            found = self._handles[cache.path] = cache.for_run()
        return found


def _lowest_free(taken: int) -> int:
    """The lowest bit not set in ``taken``."""
    return (~taken & (taken + 1)).bit_length() - 1


def _sample_key(base: str, index: int) -> str:
    return content_hash([base, index], algorithm="sha256")


def _file_for(path: Path) -> Path:
    """A path with a database suffix is the file; anything else is a directory for it."""
    if path.suffix in (".sqlite", ".sqlite3", ".db"):
        return path
    return path / FILENAME


def default_cache_path() -> Path:
    """``$PLAIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/plait``, else ``~/.cache/plait``."""
    configured = os.environ.get("PLAIT_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base).expanduser() if base else Path.home() / ".cache"
    return root / "plait"


_open_caches: dict[Path, ResponseCache] = {}
_registry_lock = threading.Lock()


def open_cache(spec: Any) -> ResponseCache | None:
    """The cache a ``cache=`` setting names: None/False for none, True for the
    default location, a path, or a ResponseCache. Caches are shared per file,
    so every run in the process sees replies another run has not yet committed;
    one closed by a failed write is opened afresh.
    """
    if spec is None or spec is False:
        return None
    if isinstance(spec, ResponseCache):
        return spec
    path = _file_for(default_cache_path() if spec is True else Path(spec).expanduser())
    key = path.resolve()
    with _registry_lock:
        cache = _open_caches.get(key)
        if cache is None or cache.closed:
            cache = _open_caches[key] = ResponseCache(key)
        return cache
