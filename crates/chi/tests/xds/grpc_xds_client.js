// gRPC's Node client (@grpc/grpc-js with @grpc/grpc-js-xds) for chi's `chi xds` test.
//
//   node grpc_xds_client.js TARGET    a channel to TARGET (e.g. xds:///order-service, with
//                                     GRPC_XDS_BOOTSTRAP set); reads commands on stdin:
//                                     "call N [VERSION]" makes N calls of /chi.test.Echo/Who (with
//                                     x-service-version: VERSION when given) and prints one JSON
//                                     line {"counts": {NAME: calls}, "errors": {CODE: calls}};
//                                     "burst N" starts N calls 10 ms apart (together in flight
//                                     on slow backends; a call is counted in flight once it
//                                     started, not when picked) and prints the same line when
//                                     all are done.
//
// The modules come from NODE_PATH (scripts/xds-clients installs them outside the clone).
'use strict';

const readline = require('readline');
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const METHOD = '/chi.test.Echo/Who';
const target = process.argv[2];
if (!target) {
  process.stderr.write('usage: grpc_xds_client.js TARGET\n');
  process.exit(2);
}

const client = new grpc.Client(target, grpc.credentials.createInsecure());
const identity = (b) => b;

function call(version) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + 5000);
    const metadata = new grpc.Metadata();
    if (version) metadata.set('x-service-version', version);
    client.makeUnaryRequest(METHOD, identity, identity, Buffer.alloc(0), metadata, { deadline }, (err, reply) => {
      resolve(err ? { error: grpc.status[err.code] || String(err.code), details: err.details } : { name: reply.toString() });
    });
  });
}

function tally(results) {
  const counts = {};
  const errors = {};
  for (const r of results) {
    if (r.error) {
      if (!errors[r.error]) process.stderr.write(`rpc error: ${r.error} ${r.details}\n`);
      errors[r.error] = (errors[r.error] || 0) + 1;
    } else {
      counts[r.name] = (counts[r.name] || 0) + 1;
    }
  }
  return { counts, errors };
}

async function batch(n, version) {
  const results = [];
  for (let i = 0; i < n; i++) results.push(await call(version));
  return tally(results);
}

async function burst(n) {
  const calls = [];
  for (let i = 0; i < n; i++) {
    calls.push(call());
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return tally(await Promise.all(calls));
}

const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on('line', (line) => {
  queue = queue.then(async () => {
    const words = line.trim().split(/\s+/);
    if (words.length === 2 && words[0] === 'burst') {
      console.log(JSON.stringify(await burst(parseInt(words[1], 10))));
      return;
    }
    if (words.length < 2 || words.length > 3 || words[0] !== 'call') {
      console.log(JSON.stringify({ error: `unknown command ${JSON.stringify(line)}` }));
      return;
    }
    console.log(JSON.stringify(await batch(parseInt(words[1], 10), words[2])));
  });
});
lines.on('close', () => {
  queue.then(() => {
    client.close();
    process.exit(0);
  });
});
console.log('ready');
