"""OpenTelemetry traces, shared by the coordinator and the SDK (the ``tracing`` extra).

Off by default. Off, a service holds no ``Tracing`` at all (``None``) and every call site pays
one ``is not None`` test: OpenTelemetry is not even imported. On, a service has its own tracer
provider (its ``service.name`` resource) exporting by OTLP over HTTP (the exporter reads the
standard ``OTEL_EXPORTER_OTLP_*`` variables) or to standard output, and:

- the coordinator continues a W3C ``traceparent`` sent with a submission, keeps its
  submission span's context in the log with the transaction (so a drive resumed by recovery,
  even on another instance, joins the same trace), and sends ``traceparent`` with every
  participant call, one client span per call;
- the SDK continues that context in the participant: one server span per branch call, with
  the business handler running inside it (a handler's own spans become its children).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

Mode = Literal["off", "otlp", "console"]
TRACEPARENT = "traceparent"

MISSING_EXTRA = (
    "tracing is on ({setting}={mode}) but OpenTelemetry is not installed: "
    "pip install 'txn-coordinator[tracing]', or set {setting}=off"
)


class TracingUnavailable(RuntimeError):
    """Tracing was asked for and cannot be had (the extra is not installed)."""


def make_exporter(mode: Mode) -> SpanExporter:
    """The exporter for ``mode``."""
    if mode == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class Tracing:
    """One service's spans: a provider of its own, a tracer, the W3C propagator."""

    def __init__(self, provider: TracerProvider, service: str) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.service = service
        self.tracer = provider.get_tracer("txn-coordinator")
        self.propagator = TraceContextTextMapPropagator()
        self._trace = trace

    # -- context in and out ----------------------------------------------------------------

    def _context(self, traceparent: str | None) -> Any:
        if not traceparent:
            return None
        return self.propagator.extract({TRACEPARENT: traceparent})

    def current_traceparent(self) -> str | None:
        """The current span's context as a ``traceparent`` value (None outside a span)."""
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier)
        return carrier.get(TRACEPARENT)

    # -- spans -------------------------------------------------------------------------------

    @contextmanager
    def server(
        self, name: str, headers: Mapping[str, str], attributes: dict[str, Any]
    ) -> Iterator[Span]:
        """A span for a request received, continuing the caller's ``traceparent``."""
        with self.tracer.start_as_current_span(
            name,
            context=self._context(headers.get(TRACEPARENT)),
            kind=self._trace.SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            yield span

    @contextmanager
    def internal(
        self, name: str, attributes: dict[str, Any], parent: str | None = None
    ) -> Iterator[Span]:
        """A span for work of this service: a child of ``parent`` (a ``traceparent`` value)
        when given, else of the current span."""
        with self.tracer.start_as_current_span(
            name, context=self._context(parent), attributes=attributes
        ) as span:
            yield span

    @contextmanager
    def client(self, name: str, attributes: dict[str, Any]) -> Iterator[tuple[Span, str]]:
        """A span for a call made: yields it with the ``traceparent`` to send."""
        with self.tracer.start_as_current_span(
            name, kind=self._trace.SpanKind.CLIENT, attributes=attributes
        ) as span:
            yield span, self.current_traceparent() or ""

    def failed(self, span: Span, description: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, description))

    def shutdown(self) -> None:
        """Export what is buffered, then stop."""
        self.provider.shutdown()


def start(mode: Mode, service: str, setting: str) -> Tracing | None:
    """The service's tracing for ``mode`` (None when off). ``OTEL_SERVICE_NAME`` overrides
    ``service``. Raises TracingUnavailable when on without the extra installed."""
    if mode == "off":
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as e:
        raise TracingUnavailable(MISSING_EXTRA.format(setting=setting, mode=mode)) from e
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    # Batched: a span costs the request an append to a queue, never an export.
    provider.add_span_processor(BatchSpanProcessor(make_exporter(mode)))
    return Tracing(provider, name)
