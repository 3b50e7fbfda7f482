#!/usr/bin/env python3
"""gRPC peers for chi's `chi xds` test, on Python grpcio (gRPC's C-core, with its xDS client).

    grpc_peer.py serve NAME...   one gRPC server per NAME on 127.0.0.1, a free port each; prints
                                 "backend NAME PORT" per server, serves until stdin closes.
                                 The unary method /chi.test.Echo/Who answers the server's NAME;
                                 a server whose NAME starts with "failing" fails every call
                                 with UNAVAILABLE instead, and one whose NAME starts with "slow"
                                 answers after 300 ms.
    grpc_peer.py client TARGET   a channel to TARGET (e.g. xds:///order-service, with
                                 GRPC_XDS_BOOTSTRAP set); reads commands on stdin:
                                 "call N [VERSION]" makes N calls (with the header
                                 x-service-version: VERSION when given) and prints one JSON
                                 line {"counts": {NAME: calls}, "errors": {CODE: calls}};
                                 "first NAME" calls back to back until one lands on NAME
                                 (for at most 30 s) and prints the same line at once, with
                                 "landed": true or false;
                                 "burst N" starts N calls 10 ms apart (together in flight on
                                 the slow backends) and prints the same line when all are
                                 done.

No generated code: the messages are raw bytes.
"""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

SERVICE = "chi.test.Echo"
METHOD = f"/{SERVICE}/Who"


def serve(names):
    servers = []
    for name in names:
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        answer = name.encode()
        if name.startswith("failing"):
            def who(_req, ctx, n=name):
                ctx.abort(grpc.StatusCode.UNAVAILABLE, f"{n} fails every call")
        elif name.startswith("slow"):
            def who(_req, _ctx, a=answer):
                time.sleep(0.3)
                return a
        else:
            def who(_req, _ctx, a=answer):
                return a
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Who": grpc.unary_unary_rpc_method_handler(who)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        print(f"backend {name} {port}", flush=True)
    sys.stdin.read()
    for server in servers:
        server.stop(0)


def client(target):
    channel = grpc.insecure_channel(target)
    who = channel.unary_unary(METHOD)
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if len(words) == 2 and words[0] == "first":
            print(json.dumps(first(who, words[1])), flush=True)
            continue
        if len(words) == 2 and words[0] == "burst":
            print(json.dumps(burst(who, int(words[1]))), flush=True)
            continue
        if len(words) not in (2, 3) or words[0] != "call":
            print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)
            continue
        metadata = (("x-service-version", words[2]),) if len(words) == 3 else None
        counts, errors = {}, {}
        for _ in range(int(words[1])):
            try:
                name = who(b"", timeout=5, metadata=metadata).decode()
                counts[name] = counts.get(name, 0) + 1
            except grpc.RpcError as e:
                code = str(e.code())
                errors[code] = errors.get(code, 0) + 1
                if errors[code] == 1:
                    print(f"rpc error: {code} {e.details()}", file=sys.stderr, flush=True)
        print(json.dumps({"counts": counts, "errors": errors}), flush=True)
    channel.close()


def burst(who, n):
    """`n` calls started 10 ms apart; their answers."""
    counts, errors = {}, {}
    futures = []
    for _ in range(n):
        futures.append(who.future(b"", timeout=5))
        time.sleep(0.01)
    for future in futures:
        try:
            name = future.result().decode()
            counts[name] = counts.get(name, 0) + 1
        except grpc.RpcError as e:
            code = str(e.code())
            errors[code] = errors.get(code, 0) + 1
    return {"counts": counts, "errors": errors}


def first(who, wanted):
    """Calls until one lands on backend `wanted` or 30 s pass."""
    counts, errors = {}, {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            name = who(b"", timeout=5).decode()
            counts[name] = counts.get(name, 0) + 1
            if name == wanted:
                return {"counts": counts, "errors": errors, "landed": True}
        except grpc.RpcError as e:
            code = str(e.code())
            errors[code] = errors.get(code, 0) + 1
    return {"counts": counts, "errors": errors, "landed": False}


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve(sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "client":
        client(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
