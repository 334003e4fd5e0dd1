"""Sends the exporters test's spans with the OpenTelemetry Python SDK.

usage: export_spans.py http|grpc ENDPOINT SERVICE
"""

import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

LINKED_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
LINKED_SPAN = 0xB7AD6B7169203331


def main() -> None:
    proto, endpoint, service = sys.argv[1:4]
    if proto == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint)
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
    resource = Resource.create(
        {"service.name": service, "service.version": "4.2.0", "cloud.region": "eu-west-1"}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("andon-e2e")
    linked = SpanContext(LINKED_TRACE, LINKED_SPAN, is_remote=True, trace_flags=TraceFlags(1))
    with tracer.start_as_current_span("GET /orders/{id}", kind=SpanKind.INTERNAL) as root:
        root.set_attributes(
            {
                "http.route": "/orders/{id}",
                "http.request.method": "GET",
                "http.response.status_code": 500,
                "session.id": "sess-42",
                "app.cart.items": 3,
            }
        )
        for i in range(3):
            links = [Link(linked)] if i == 2 else []
            child = tracer.start_span(
                f"SELECT orders {i}",
                kind=SpanKind.CLIENT,
                attributes={"db.system.name": "postgresql", "app.step": i},
                links=links,
            )
            if i == 1:
                child.add_event(
                    "exception",
                    {"exception.type": "PoolTimeout", "exception.message": "no connection in 5s"},
                )
                child.set_status(Status(StatusCode.ERROR, "pool exhausted"))
            child.end()
        root.set_status(Status(StatusCode.ERROR, "internal"))
    if not provider.force_flush(30_000):
        sys.exit("flush timed out")
    provider.shutdown()


if __name__ == "__main__":
    main()
