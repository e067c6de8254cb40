"""OpenTelemetry tracing: one order's path through every service as one trace.

The maintained instrumentations do the broker and database work: aio-pika's
puts the trace context in each message's headers on publish and continues it
on consume; asyncpg's records each query. The outbox is the one gap: a message
is published by the relay, later and elsewhere than the handler that wrote it.
So ``enqueue`` stores the handler's trace context with the outbox row, and the
relay publishes each row inside that context again.

The exporter is off by default. OTEL_EXPORTER_OTLP_ENDPOINT points it at a
collector (OTLP over HTTP); TRACE_FILE writes spans as JSON lines, for
development and tests.
"""

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

tracer = trace.get_tracer("orderflow")
_enabled = False


def enabled() -> bool:
    """Whether this process records spans (``setup_tracing`` was given somewhere to send them)."""
    return _enabled


def captured() -> context.Context:
    """The active trace context, to handle a message later in another task (a batch) inside it."""
    return context.get_current()


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span to a file, one JSON object per line."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as out:
            for span in spans:
                out.write(json.dumps(json.loads(span.to_json()), separators=(",", ":")) + "\n")
        return SpanExportResult.SUCCESS


def setup_tracing(service: str, *, otlp_endpoint: str | None, trace_file: str | None) -> None:
    """Instrument aio-pika and asyncpg and export spans, when an endpoint or a file is configured.

    Without either, nothing is instrumented: wrapping every query and every message in a span nobody
    records cost about 4 % of a saga's CPU (bench.load). Tracing is then on for every process or for none,
    which is how a deployment configures it (one collector endpoint for all)."""
    global _enabled
    if not (otlp_endpoint or trace_file):
        return
    _enabled = True
    provider = TracerProvider(resource=Resource.create({"service.name": f"orderflow-{service}"}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces"))
        )
    if trace_file:
        provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(trace_file), schedule_delay_millis=200))
    trace.set_tracer_provider(provider)
    AioPikaInstrumentor().instrument()
    AsyncPGInstrumentor().instrument()


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def current_context() -> dict[str, str]:
    """The active trace context as W3C headers, to store with an outbox row."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def restored(carrier: dict[str, str]) -> Iterator[None]:
    """Run a block inside the trace context an outbox row was written in."""
    token = context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        context.detach(token)


@contextlib.contextmanager
def handling(message_type: str, attributes: dict[str, Any], *, parent: context.Context | None = None) -> Iterator[None]:
    """The span of one handled message, named after its type, with the order id on it; under ``parent`` (the
    context its delivery was received in) rather than the current one, when given."""
    token = context.attach(parent) if parent is not None else None
    try:
        with tracer.start_as_current_span(f"handle {message_type}", attributes=attributes):
            yield
    finally:
        if token is not None:
            context.detach(token)
