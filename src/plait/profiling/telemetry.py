"""OpenTelemetry spans for runs, inputs and nodes, through ``opentelemetry-api`` only.

plait never installs an SDK: the application decides where spans go. This
module is imported only once the application has imported the API. With no
SDK configured the global provider is the API's proxy, which would make
every span a no-op; :func:`tracer_for` notices that once per run and returns
None, so an untraced run builds no span objects at all.

LLM spans follow the OpenTelemetry GenAI semantic conventions
(``gen_ai.*``), so tracing backends that understand them show model, token
counts and finish reasons without configuration; plait's own attributes
(``plait.*``) add the alias, node, input and retry count. Prompt and reply
text are recorded only with ``capture_content=True``, since they may hold
personal data. Nothing from the endpoint configuration (addresses, keys,
headers) is ever put on a span.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from plait.profiling.observer import NodeRun, RunObserver

GEN_AI_SYSTEM = "openai"
"""Every endpoint speaks the OpenAI chat-completions protocol."""

_MAX_STATUS_TEXT = 500


def tracer_for(provider: Any = None) -> trace.Tracer | None:
    """A tracer from ``provider`` (or the global one), or None if spans would go nowhere."""
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None
    tracer: trace.Tracer = provider.get_tracer("plait")
    return tracer


@runtime_checkable
class SpanDescribed(Protocol):
    """A module that names its own node span, e.g. a tool run's GenAI ``execute_tool``."""

    def span_description(self) -> tuple[str, dict[str, Any]]:
        """The span's name and the attributes to add to plait's own."""
        ...


class SpanObserver(RunObserver):
    """Turns a run's events into a span tree: run > input > node, and a dynamic
    node's calls below its own span."""

    def __init__(self, tracer: trace.Tracer, *, capture_content: bool = False) -> None:
        self.tracer = tracer
        self.capture_content = capture_content
        self._run: Span | None = None
        self._inputs: dict[int, Span] = {}

    def run_started(self, name: str, total: int | None) -> None:
        attributes: dict[str, Any] = {"plait.module": name}
        if total is not None:
            attributes["plait.inputs"] = total
        self._run = self.tracer.start_span(f"plait.run {name}", attributes=attributes)

    def run_finished(self, error: BaseException | None) -> None:
        for span in self._inputs.values():
            span.set_attribute("plait.input.abandoned", True)
            span.end()
        self._inputs.clear()
        run = self._run
        if run is not None:
            if error is not None:
                _set_error(run, error)
            run.end()
            self._run = None

    def input_started(self, index: int) -> None:
        context = trace.set_span_in_context(self._run) if self._run is not None else None
        self._inputs[index] = self.tracer.start_span(
            "plait.input", context=context, attributes={"plait.input.index": index}
        )

    def input_finished(self, index: int, error: BaseException | None, restored: bool) -> None:
        span = self._inputs.pop(index, None)
        if span is None:
            return
        if restored:
            span.set_attribute("plait.checkpoint.restored", True)
        if error is not None:
            _set_error(span, error)
        span.end()

    def node_started(self, run: NodeRun) -> None:
        caller = run.parent
        parent = (
            caller.span
            if caller is not None and caller.span is not None
            else self._inputs.get(run.index) or self._run
        )
        context = trace.set_span_in_context(parent) if parent is not None else None
        node = run.node
        llm = node.kind.value == "llm"
        attributes: dict[str, Any] = {
            "plait.node_id": run.node_id,
            "plait.input.index": run.index,
            "plait.retries": run.attempt,
        }
        if node.module_path:
            attributes["plait.module_path"] = node.module_path
        if llm:
            module = node.module
            attributes["gen_ai.operation.name"] = "chat"
            attributes["gen_ai.system"] = GEN_AI_SYSTEM
            attributes["plait.alias"] = module.alias
            name = "chat"
        elif isinstance(node.module, SpanDescribed):
            name, extra = node.module.span_description()
            attributes.update(extra)
        else:
            name = f"plait.node {node.module_path or run.node_id}"
        run.span = self.tracer.start_span(
            name,
            context=context,
            kind=SpanKind.CLIENT if llm else SpanKind.INTERNAL,
            attributes=attributes,
        )

    def node_finished(self, run: NodeRun) -> None:
        span: Span | None = run.span
        if span is None:
            return
        run.span = None
        if run.request is not None:
            self._llm_attributes(span, run)
        if run.error is not None:
            _set_error(span, run.error)
        span.end()

    def _llm_attributes(self, span: Span, run: NodeRun) -> None:
        request, response, probe = run.request, run.response, run.probe
        if request.model:
            span.update_name(f"chat {request.model}")
            span.set_attribute("gen_ai.request.model", request.model)
        if request.temperature is not None:
            span.set_attribute("gen_ai.request.temperature", request.temperature)
        if request.max_tokens is not None:
            span.set_attribute("gen_ai.request.max_tokens", request.max_tokens)
        if probe is not None:
            if probe.endpoint:
                span.set_attribute("plait.endpoint", probe.endpoint)
            span.set_attribute("plait.cache_hit", probe.cache_hit)
            if probe.cost is not None:
                span.set_attribute("plait.cost", probe.cost)
            if probe.first_token:
                span.set_attribute("plait.streamed", True)
                span.set_attribute(
                    "gen_ai.server.time_to_first_token", probe.first_token - probe.sent
                )
        if self.capture_content:
            span.set_attribute(
                "gen_ai.input.messages", json.dumps(request.messages, ensure_ascii=False)
            )
        if response is None:
            return
        if response.model:
            span.set_attribute("gen_ai.response.model", response.model)
        if response.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [response.finish_reason])
        if probe is None or not probe.cache_hit:
            # A cached reply used no tokens; its stored counts are not usage.
            span.set_attribute("gen_ai.usage.input_tokens", response.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", response.output_tokens)
        if self.capture_content:
            reply = [{"role": "assistant", "content": response.content}]
            span.set_attribute("gen_ai.output.messages", json.dumps(reply, ensure_ascii=False))


def _set_error(span: Span, error: BaseException) -> None:
    """Mark the span failed; the message is the error's own (clients redact keys from it)."""
    text = f"{type(error).__name__}: {error}"
    if len(text) > _MAX_STATUS_TEXT:
        text = text[: _MAX_STATUS_TEXT - 3] + "..."
    span.set_attribute("error.type", type(error).__qualname__)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, text))
