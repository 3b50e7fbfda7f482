// gRPC backends that report their load (ORCA), on gRPC's Node implementation (@grpc/grpc-js 1.14),
// for chi's `chi xds` test of orca_weighted_round_robin:
//
//   node orca_backends.js [--out-of-band-only] NAME=UTILIZATION...
//       one server per NAME on 127.0.0.1, a free port each; prints "backend NAME PORT" per server
//       and serves until stdin closes. With --out-of-band-only the answers carry no report, so
//       only a client that opens OpenRcaService streams learns the load.
//
// The unary method /chi.test.Echo/Who answers the server's NAME (raw bytes, as grpc_peer.py's).
// Each answer carries a per-call report (the endpoint-load-metrics-bin trailer) and each server
// serves OpenRcaService (out-of-band reports at the interval a client asks): 100 queries per
// second at UTILIZATION, as application and CPU utilization both (grpc-js weighs by the
// application utilization only, gRPC's C core by it when set), so the weight of a server is
// 100 / UTILIZATION for either client.
//
// NODE_PATH must hold @grpc/grpc-js (scripts/xds-clients node-path).
'use strict';

const grpc = require('@grpc/grpc-js');

const QPS = 100;
const identity = (b) => b;

async function serve(name, utilization, perCall) {
  const server = new grpc.Server({ 'grpc.server_call_metric_recording': perCall ? 1 : 0 });
  const recorder = new grpc.ServerMetricRecorder();
  recorder.setApplicationUtilizationMetric(utilization);
  recorder.setCpuUtilizationMetric(utilization);
  recorder.setQpsMetric(QPS);
  recorder.addToServer(server);
  server.addService({
    Who: {
      path: '/chi.test.Echo/Who', requestStream: false, responseStream: false,
      requestSerialize: identity, requestDeserialize: identity,
      responseSerialize: identity, responseDeserialize: identity,
    },
  }, {
    Who: (call, callback) => {
      if (perCall) {
        const report = call.getMetricsRecorder();
        report.recordApplicationUtilizationMetric(utilization);
        report.recordCPUUtilizationMetric(utilization);
        report.recordQpsMetric(QPS);
      }
      callback(null, Buffer.from(name));
    },
  });
  const port = await new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => {
      if (err) reject(err); else resolve(p);
    });
  });
  console.log(`backend ${name} ${port}`);
  return server;
}

async function main() {
  const args = process.argv.slice(2);
  const perCall = args[0] !== '--out-of-band-only';
  if (!perCall) args.shift();
  const specs = args.map((arg) => {
    const [name, value] = arg.split('=');
    const utilization = Number(value);
    if (!name || !(utilization > 0 && utilization <= 1)) {
      process.stderr.write(`usage: orca_backends.js NAME=UTILIZATION... (0 < UTILIZATION <= 1), got ${arg}\n`);
      process.exit(2);
    }
    return [name, utilization];
  });
  const servers = [];
  for (const [name, utilization] of specs) servers.push(await serve(name, utilization, perCall));
  process.stdin.resume();
  process.stdin.on('end', () => {
    for (const s of servers) s.forceShutdown();
    process.exit(0);
  });
}

main().catch((e) => { process.stderr.write(`${e}\n`); process.exit(1); });
