// gRPC's Node implementation (@grpc/grpc-js 1.14) against chi's ORCA, both ways:
//   node orca_grpc_js.js oob HOST:PORT    StreamCoreMetrics of a chi server (100 ms asked): its
//                                         first 3 reports, one JSON line each
//   node orca_grpc_js.js call HOST:PORT   one grpc.health.v1.Health/Check call: the
//                                         endpoint-load-metrics-bin trailer, decoded, as JSON
//   node orca_grpc_js.js serve            a grpc-js server whose ServerMetricRecorder serves
//                                         OpenRcaService: prints "port N", serves until stdin ends
// NODE_PATH must hold @grpc/grpc-js and @grpc/proto-loader (scripts/xds-clients node-path).
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const path = require('path');

const root = path.dirname(require.resolve('@grpc/grpc-js/package.json'));
const orca = grpc.loadPackageDefinition(loader.loadSync('xds/service/orca/v3/orca.proto', {
  keepCase: true,
  longs: Number,
  defaults: false,
  includeDirs: [root + '/proto/xds', root + '/proto/protoc-gen-validate'],
})).xds;
const Report = orca.data.orca.v3.OrcaLoadReport;

const [mode, target] = process.argv.slice(2);
const fail = (e) => { console.error(String(e)); process.exit(1); };
setTimeout(() => fail('timed out'), 10000).unref();

if (mode === 'oob') {
  const client = new orca.service.orca.v3.OpenRcaService(target, grpc.credentials.createInsecure());
  const call = client.StreamCoreMetrics({ report_interval: { seconds: 0, nanos: 100000000 } });
  let seen = 0;
  call.on('data', (r) => {
    console.log(JSON.stringify(r));
    if (++seen === 3) { call.cancel(); process.exit(0); }
  });
  call.on('error', (e) => { if (seen < 3) fail(e); });
} else if (mode === 'call') {
  // The health request is empty: an empty message is zero bytes.
  const Health = grpc.makeGenericClientConstructor({
    Check: {
      path: '/grpc.health.v1.Health/Check', requestStream: false, responseStream: false,
      requestSerialize: (b) => b, requestDeserialize: (b) => b,
      responseSerialize: (b) => b, responseDeserialize: (b) => b,
    },
  });
  const client = new Health(target, grpc.credentials.createInsecure());
  const call = client.Check(Buffer.alloc(0), (err) => { if (err) fail(err); });
  call.on('status', (status) => {
    const bin = status.metadata.get('endpoint-load-metrics-bin');
    if (bin.length !== 1) fail('no endpoint-load-metrics-bin trailer');
    console.log(JSON.stringify(Report.deserialize(bin[0])));
    process.exit(0);
  });
} else if (mode === 'serve') {
  const recorder = new grpc.ServerMetricRecorder();
  recorder.setCpuUtilizationMetric(0.3);
  recorder.setApplicationUtilizationMetric(0.6);
  recorder.setQpsMetric(50);
  recorder.setEpsMetric(5);
  recorder.putUtilizationMetric('disk', 0.25);
  const server = new grpc.Server();
  recorder.addToServer(server);
  server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) fail(err);
    console.log(`port ${port}`);
  });
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
} else {
  fail(`unknown mode ${mode}`);
}
