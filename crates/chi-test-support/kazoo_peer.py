"""A foreign ZooKeeper client for chi's tests: kazoo (PyPI 2.11), driven one JSON request per line
on stdin, one JSON answer per line on stdout ({"ok": ...} or {"error": name, "message": ...}).

It writes and reads services the way Java clients do, independently of chi's Rust code:
- Curator's service discovery as Spring Cloud Zookeeper uses it: an ephemeral node ROOT/NAME/ID
  holding Curator's ServiceInstance JSON with a ZookeeperInstance payload;
- Dubbo's registry: an ephemeral node ROOT/INTERFACE/providers/ENCODED-URL, the provider URL
  encoded as Java's URLEncoder does.

Usage: kazoo_peer.py HOSTS SESSION_TIMEOUT_SECONDS
"""

import json
import sys
import time
import uuid
from urllib.parse import quote_plus, unquote_plus

from kazoo.client import KazooClient
from kazoo.security import make_acl, make_digest_acl

SCZ_CLASS = "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance"
URI_SPEC = {"parts": [
    {"value": "scheme", "variable": True}, {"value": "://", "variable": False},
    {"value": "address", "variable": True}, {"value": ":", "variable": False},
    {"value": "port", "variable": True},
]}


def java_url_encode(s):
    # java.net.URLEncoder: keeps A-Za-z0-9 . - * _, space as +, everything else %XX.
    return quote_plus(s, safe="*").replace("~", "%7E")


def acl_of(req):
    acl = req.get("acl")
    if not acl:
        return None
    out = []
    if "digest" in acl:
        user, password = acl["digest"]
        out.append(make_digest_acl(user, password, all=True))
    if acl.get("world_read"):
        out.append(make_acl("world", "anyone", read=True))
    return out


def handle(zk, req):
    op = req["op"]
    if op == "ping":
        return True
    if op == "auth":
        zk.add_auth("digest", req["credential"])
        return True
    if op == "session_id":
        return zk.client_id[0]
    if op == "create":
        return zk.create(req["path"], req.get("data", "").encode(), acl=acl_of(req),
                         ephemeral=req.get("ephemeral", False), makepath=req.get("makepath", True))
    if op == "set":
        zk.set(req["path"], req.get("data", "").encode())
        return True
    if op == "delete":
        zk.delete(req["path"], recursive=req.get("recursive", False))
        return True
    if op == "exists":
        return zk.exists(req["path"]) is not None
    if op == "get":
        data, stat = zk.get(req["path"])
        return {"data": data.decode("utf-8", "replace"), "ephemeral_owner": stat.ephemeralOwner}
    if op == "children":
        return sorted(zk.get_children(req["path"]))
    if op == "curator_register":
        root, name = req["root"], req["name"]
        instance_id = req.get("id") or str(uuid.uuid4())
        instance = {
            "name": name,
            "id": instance_id,
            "address": req["address"],
            "port": req["port"],
            "sslPort": None,
            "payload": {"@class": SCZ_CLASS, "id": "application-1", "name": name,
                        "metadata": req.get("metadata", {})},
            "registrationTimeUTC": int(time.time() * 1000),
            "serviceType": "DYNAMIC",
            "uriSpec": URI_SPEC,
        }
        path = "%s/%s/%s" % (root, name, instance_id)
        return zk.create(path, json.dumps(instance).encode(), ephemeral=True, makepath=True)
    if op == "curator_list":
        base = "%s/%s" % (req["root"], req["name"])
        if zk.exists(base) is None:
            return []
        out = []
        for child in sorted(zk.get_children(base)):
            data, _ = zk.get("%s/%s" % (base, child))
            si = json.loads(data.decode())
            # What Curator's JsonInstanceSerializer needs to build a ServiceInstance.
            for key in ("name", "id", "address", "port", "registrationTimeUTC", "serviceType"):
                if key not in si:
                    raise ValueError("node %s lacks %s" % (child, key))
            if si["serviceType"] not in ("DYNAMIC", "STATIC", "PERMANENT", "DYNAMIC_SEQUENTIAL"):
                raise ValueError("bad serviceType %r" % si["serviceType"])
            payload = si.get("payload") or {}
            out.append({"name": si["name"], "id": si["id"], "address": si["address"],
                        "port": si["port"], "class": payload.get("@class"),
                        "metadata": payload.get("metadata", {}), "uriSpec": si.get("uriSpec")})
        return out
    if op == "dubbo_register":
        path = "%s/%s/providers/%s" % (req["root"], req["interface"], java_url_encode(req["url"]))
        return zk.create(path, b"", ephemeral=True, makepath=True)
    if op == "dubbo_list":
        base = "%s/%s/providers" % (req["root"], req["interface"])
        if zk.exists(base) is None:
            return []
        return sorted(unquote_plus(c) for c in zk.get_children(base))
    if op == "close":
        zk.stop()
        zk.close()
        return True
    raise ValueError("unknown op %r" % op)


def main():
    hosts = sys.argv[1]
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    zk = KazooClient(hosts=hosts, timeout=timeout)
    zk.start(timeout=15)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = {"ok": handle(zk, json.loads(line))}
        except Exception as e:  # every failure goes back to the test, named
            answer = {"error": type(e).__name__, "message": str(e)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        if answer.get("ok") is True and json.loads(line).get("op") == "close":
            return


if __name__ == "__main__":
    main()
