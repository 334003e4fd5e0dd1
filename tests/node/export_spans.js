// Sends the exporters test's spans with the OpenTelemetry JavaScript SDK.
// usage: node export_spans.js http|grpc ENDPOINT SERVICE  (NODE_PATH names the modules)
'use strict';

const { BasicTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const api = require('@opentelemetry/api');

async function main() {
  const [proto, endpoint, service] = process.argv.slice(2);
  const { OTLPTraceExporter } = proto === 'http'
    ? require('@opentelemetry/exporter-trace-otlp-proto')
    : require('@opentelemetry/exporter-trace-otlp-grpc');
  const exporter = new OTLPTraceExporter({ url: endpoint });
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({
      'service.name': service, 'service.version': '4.2.0', 'cloud.region': 'eu-west-1',
    }),
    spanProcessors: [new BatchSpanProcessor(exporter)],
  });
  const tracer = provider.getTracer('andon-e2e');
  const linked = {
    traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331',
    traceFlags: api.TraceFlags.SAMPLED, isRemote: true,
  };
  const root = tracer.startSpan('GET /orders/{id}', { kind: api.SpanKind.INTERNAL });
  root.setAttributes({
    'http.route': '/orders/{id}', 'http.request.method': 'GET', 'http.response.status_code': 500,
    'session.id': 'sess-42', 'app.cart.items': 3,
  });
  const ctx = api.trace.setSpan(api.context.active(), root);
  for (let i = 0; i < 3; i++) {
    const child = tracer.startSpan(`SELECT orders ${i}`, {
      kind: api.SpanKind.CLIENT,
      attributes: { 'db.system.name': 'postgresql', 'app.step': i },
      links: i === 2 ? [{ context: linked }] : [],
    }, ctx);
    if (i === 1) {
      child.addEvent('exception', { 'exception.type': 'PoolTimeout', 'exception.message': 'no connection in 5s' });
      child.setStatus({ code: api.SpanStatusCode.ERROR, message: 'pool exhausted' });
    }
    child.end();
  }
  root.setStatus({ code: api.SpanStatusCode.ERROR, message: 'internal' });
  root.end();
  await provider.forceFlush();
  await provider.shutdown();
}

main().catch((e) => { console.error(e); process.exit(1); });
