"""Sends the exporters test's spans with the OpenTelemetry Python SDK.

usage: export_spans.py http|grpc ENDPOINT SERVICE

Against a server with TLS and auth on, the environment gives the CA to trust
(ANDON_TEST_CA), the client certificate and key for mutual TLS
(ANDON_TEST_CLIENT_CERT, ANDON_TEST_CLIENT_KEY) and the bearer token
(ANDON_TEST_TOKEN).
"""

import os
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

LINKED_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
LINKED_SPAN = 0xB7AD6B7169203331


def main() -> None:
    proto, endpoint, service = sys.argv[1:4]
    ca, cert, key = (os.environ.get(k) for k in ("ANDON_TEST_CA", "ANDON_TEST_CLIENT_CERT", "ANDON_TEST_CLIENT_KEY"))
    token = os.environ.get("ANDON_TEST_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else None
    if proto == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=endpoint,
            certificate_file=ca,
            client_certificate_file=cert,
            client_key_file=key,
            headers=headers,
        )
    elif ca:
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        def read(path):
            with open(path, "rb") as f:
                return f.read()

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(ca),
            private_key=read(key) if key else None,
            certificate_chain=read(cert) if cert else None,
        )
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=False, credentials=credentials, headers=headers)
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, headers=headers)
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
