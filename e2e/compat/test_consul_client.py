"""Consul compatibility suite: drives a running Roster server with py-consul, as a Consul user would.

The server is not started here. ROSTER_HTTP_ADDR ("host:port", default 127.0.0.1:8500) names it; for a
cluster, ROSTER_HTTP_ADDRS is a comma separated list: writes go through the first server and reads are
checked through every server (Consul's default consistency mode forwards reads to the leader, so a
write is visible everywhere as soon as it is acknowledged).

Expected shapes and status codes follow ../../../shared/consul-reference/consul-1.10.3-dev.json,
recorded from a real Consul 1.10.3 agent, except that where Consul answers a client's bad input with
500 (bad flags, unknown session on acquire, bad session TTL, registration without Node) Roster answers
400 with the same message.

Every test works under its own uuid-based key prefix, service and node names, so tests are independent
of each other and of whatever else the server holds.
"""

import base64
import concurrent.futures
import os
import re
import time
import uuid

import consul
import pytest
import requests

KIB = 1024
MAX_VALUE_SIZE = 512 * KIB  # Consul's default kv_max_value_size


def _parse_addrs():
    raw = os.environ.get("ROSTER_HTTP_ADDRS") or os.environ.get("ROSTER_HTTP_ADDR") or "127.0.0.1:8500"
    addrs = [a.strip().removeprefix("http://").rstrip("/") for a in raw.split(",") if a.strip()]
    assert addrs, f"no server address in {raw!r}"
    return addrs


ADDRS = _parse_addrs()
WRITE_ADDR = ADDRS[0]


def client(addr):
    host, port = addr.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port))


def http(method, path, addr=WRITE_ADDR, **kwargs):
    """Plain HTTP request, for what the client library hides (status codes, bodies, headers)."""
    kwargs.setdefault("timeout", 30)
    return requests.request(method, f"http://{addr}{path}", **kwargs)


def uid(kind):
    return f"compat-{kind}-{uuid.uuid4().hex[:12]}"


def eventually(check, timeout=5.0, interval=0.1):
    """Retry `check` until it stops failing. Only for state a Consul agent syncs to the catalog
    asynchronously (agent registrations and TTL updates); catalog and KV writes are checked at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session", autouse=True)
def servers_ready():
    """Wait (30 s at most) until every server reports a leader: a non-empty JSON string."""
    deadline = time.monotonic() + 30
    pending = list(ADDRS)
    last = None
    while pending:
        addr = pending[0]
        try:
            leader = http("GET", "/v1/status/leader", addr=addr, timeout=2).json()
            if isinstance(leader, str) and leader:
                pending.pop(0)
                continue
            last = f"leader is {leader!r}"
        except (requests.RequestException, ValueError) as e:
            last = repr(e)
        if time.monotonic() >= deadline:
            pytest.fail(f"server {addr} not ready after 30 s: {last}")
        time.sleep(0.2)


@pytest.fixture
def c():
    """Client for writes (and agent calls, which are local to the server they are sent to)."""
    return client(WRITE_ADDR)


@pytest.fixture
def readers():
    """One client per server: reads are asserted through each of them."""
    return [client(a) for a in ADDRS]


@pytest.fixture
def cleanup():
    """Collects undo actions; runs them after the test so a long-lived server does not fill up."""
    actions = []
    yield actions.append
    for action in reversed(actions):
        try:
            action()
        except Exception:  # best effort: the test's own outcome is what matters
            pass


@pytest.fixture
def prefix(c, cleanup):
    """A fresh KV prefix ending in '/', deleted after the test."""
    p = uid("kv") + "/"
    cleanup(lambda: c.kv.delete(p, recurse=True))
    return p


def register_external(c, cleanup, node, service, service_id, status=None, port=5432, tags=None):
    """Register an external node with one service (and a check when `status` is given) in the catalog."""
    svc = {"Service": service, "ID": service_id, "Port": port}
    if tags is not None:
        svc["Tags"] = tags
    check = None
    if status is not None:
        check = {"CheckID": f"{service_id}-alive", "Name": f"{service} alive", "Status": status,
                 "ServiceID": service_id}
    # 192.0.2.0/24 (TEST-NET-1): stored data only, nothing ever connects to it
    assert c.catalog.register(node, "192.0.2.10", service=svc, check=check) is True
    cleanup(lambda: c.catalog.deregister(node))
    return check


# --------------------------------------------------------------------------------------------------
# KV


def test_kv_put_get_round_trips_bytes_and_flags(c, readers, prefix):
    key = prefix + "bin"
    value = bytes(range(256))  # every byte value, NUL and non-UTF-8 included
    assert c.kv.put(key, value, flags=42) is True
    assert c.kv.put(prefix + "text", "hello") is True
    assert c.kv.put(prefix + "empty", b"") is True

    for r in readers:
        index, entry = r.kv.get(key)
        assert int(index) > 0
        assert entry["Key"] == key
        assert entry["Value"] == value
        assert entry["Flags"] == 42
        assert entry["LockIndex"] == 0
        assert "Session" not in entry  # omitted when unlocked, as in Consul
        assert 0 < entry["CreateIndex"] <= entry["ModifyIndex"] <= int(index)

        assert r.kv.get(prefix + "text")[1]["Value"] == b"hello"
        # an empty value is JSON null, not ""
        assert r.kv.get(prefix + "empty")[1]["Value"] is None

    raw = http("GET", f"/v1/kv/{key}?raw")
    assert raw.status_code == 200
    assert raw.content == value


def test_kv_get_missing_key_returns_none(c, readers, prefix):
    for r in readers:
        index, entry = r.kv.get(prefix + "missing")
        assert entry is None
        assert int(index) > 0  # py-consul needs X-Consul-Index even on a 404

    resp = http("GET", f"/v1/kv/{prefix}missing")
    assert resp.status_code == 404
    assert resp.headers["X-Consul-Index"].isdigit()
    assert resp.content == b""


def test_kv_recurse_and_keys_with_separator(c, readers, prefix):
    values = {"a": b"1", "b": b"2", "sub/c": b"3", "sub/d": b"4"}
    for name, value in values.items():
        assert c.kv.put(prefix + name, value) is True
    all_keys = [prefix + name for name in sorted(values)]

    for r in readers:
        _, entries = r.kv.get(prefix, recurse=True)
        assert [e["Key"] for e in entries] == all_keys  # sorted, like Consul
        assert [e["Value"] for e in entries] == [values[k] for k in sorted(values)]

        _, keys = r.kv.get(prefix, keys=True)
        assert keys == all_keys

        # the separator folds everything below sub/ into one entry
        _, keys = r.kv.get(prefix, keys=True, separator="/")
        assert keys == [prefix + "a", prefix + "b", prefix + "sub/"]

        # an empty listing is a 404, which py-consul turns into None
        assert r.kv.get(prefix + "nothing/", recurse=True)[1] is None


def test_kv_check_and_set(c, readers, prefix):
    key = prefix + "cas"
    assert c.kv.put(key, "v1", cas=0) is True  # cas=0 creates a missing key
    assert c.kv.put(key, "v2", cas=0) is False  # ... but never overwrites one

    _, entry = c.kv.get(key)
    modify_index = entry["ModifyIndex"]
    assert c.kv.put(key, "v3", cas=modify_index) is True
    assert c.kv.put(key, "v4", cas=modify_index) is False  # stale index

    for r in readers:
        _, entry = r.kv.get(key)
        assert entry["Value"] == b"v3"
        assert entry["ModifyIndex"] > modify_index


def test_kv_delete_single_and_recurse(c, readers, prefix):
    for name in ("a", "b", "sub/c"):
        assert c.kv.put(prefix + name, name) is True
    sibling = prefix.rstrip("/") + "-sibling"  # shares the prefix's text but not "prefix/"
    assert c.kv.put(sibling, "stays") is True

    assert c.kv.delete(prefix + "a") is True
    for r in readers:
        assert r.kv.get(prefix + "a")[1] is None
        assert r.kv.get(prefix + "b")[1]["Value"] == b"b"

    assert c.kv.delete(prefix, recurse=True) is True
    try:
        for r in readers:
            assert r.kv.get(prefix, recurse=True)[1] is None
            assert r.kv.get(sibling)[1]["Value"] == b"stays"
    finally:
        c.kv.delete(sibling)


def test_kv_value_size_limit(c, readers, prefix):
    # exactly the limit is accepted
    assert c.kv.put(prefix + "max", b"m" * MAX_VALUE_SIZE) is True
    for r in readers:
        assert len(r.kv.get(prefix + "max")[1]["Value"]) == MAX_VALUE_SIZE

    # one byte more is rejected: py-consul raises on the 413
    big = b"x" * (MAX_VALUE_SIZE + 1)
    with pytest.raises(consul.ConsulException, match=r"^413"):
        c.kv.put(prefix + "big", big)

    resp = http("PUT", f"/v1/kv/{prefix}big", data=big)
    assert resp.status_code == 413
    for r in readers:
        assert r.kv.get(prefix + "big")[1] is None


# --------------------------------------------------------------------------------------------------
# Sessions and locks


def test_session_lock_acquire_release(c, readers, prefix, cleanup):
    key = prefix + "lock"
    sid = c.session.create(ttl=15, behavior="release")
    other = c.session.create(ttl=15)
    cleanup(lambda: c.session.destroy(sid))
    cleanup(lambda: c.session.destroy(other))
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", sid)

    assert c.kv.put(key, "owner", acquire=sid) is True
    assert c.kv.put(key, "intruder", acquire=other) is False  # held by sid

    for r in readers:
        _, entry = r.kv.get(key)
        assert entry["Session"] == sid
        assert entry["LockIndex"] == 1
        assert entry["Value"] == b"owner"  # the failed acquire wrote nothing

    assert c.kv.put(key, "owner", release=sid) is True
    for r in readers:
        _, entry = r.kv.get(key)
        assert "Session" not in entry
        assert entry["LockIndex"] == 1

    # a released lock can be taken by another session; LockIndex counts acquisitions
    assert c.kv.put(key, "next", acquire=other) is True
    assert c.kv.get(key)[1]["LockIndex"] == 2

    for r in readers:
        _, info = r.session.info(sid)
        assert info["ID"] == sid
        assert info["Behavior"] == "release"
        assert info["TTL"] == "15s"
        _, sessions = r.session.list()
        assert sid in [s["ID"] for s in sessions]

    renewed = c.session.renew(sid)
    assert renewed["ID"] == sid
    assert renewed["TTL"] == "15s"

    assert c.session.destroy(sid) is True
    for r in readers:
        assert r.session.info(sid)[1] is None
        assert sid not in [s["ID"] for s in r.session.list()[1]]


def test_session_destroy_applies_behavior(c, readers, prefix, cleanup):
    released_key, deleted_key = prefix + "released", prefix + "deleted"
    release_sid = c.session.create(ttl=15, behavior="release")
    delete_sid = c.session.create(ttl=15, behavior="delete")
    cleanup(lambda: c.session.destroy(release_sid))
    cleanup(lambda: c.session.destroy(delete_sid))
    assert c.session.info(delete_sid)[1]["Behavior"] == "delete"

    assert c.kv.put(released_key, "r", acquire=release_sid) is True
    assert c.kv.put(deleted_key, "d", acquire=delete_sid) is True

    assert c.session.destroy(release_sid) is True
    assert c.session.destroy(delete_sid) is True

    for r in readers:
        # 'release': the key stays, unlocked
        _, entry = r.kv.get(released_key)
        assert entry["Value"] == b"r"
        assert "Session" not in entry
        # 'delete': the key goes with the session
        assert r.kv.get(deleted_key)[1] is None


# --------------------------------------------------------------------------------------------------
# Txn


def b64(data):
    return base64.b64encode(data).decode()


def test_txn_set_then_get(c, readers, prefix):
    key = prefix + "t1"
    # py-consul sends the payload as is: Values must be base64 already, and come back base64
    result = c.txn.put([
        {"KV": {"Verb": "set", "Key": key, "Value": b64(b"1"), "Flags": 7}},
        {"KV": {"Verb": "get", "Key": key}},
    ])
    assert result.get("Errors") is None
    set_kv, get_kv = (r["KV"] for r in result["Results"])
    assert set_kv["Key"] == key
    assert set_kv["Value"] is None  # a set's result carries no value, as in Consul
    assert get_kv["Value"] == b64(b"1")
    assert get_kv["Flags"] == 7
    assert get_kv["ModifyIndex"] == set_kv["ModifyIndex"] > 0

    for r in readers:
        _, entry = r.kv.get(key)
        assert entry["Value"] == b"1"
        assert entry["Flags"] == 7


def test_txn_failed_check_index_is_409_and_rolls_back(c, readers, prefix):
    key, untouched = prefix + "t1", prefix + "t2"
    assert c.kv.put(key, "1") is True
    modify_index = c.kv.get(key)[1]["ModifyIndex"]
    stale = [{"KV": {"Verb": "check-index", "Key": key, "Index": modify_index + 1000}}]

    # py-consul raises on the 409 (a ClientError whose message starts with the status)
    with pytest.raises(consul.ConsulException, match=r"^409"):
        c.txn.put(stale)

    resp = http("PUT", "/v1/txn", json=stale)
    assert resp.status_code == 409
    body = resp.json()
    assert body["Results"] is None
    assert body["Errors"][0]["OpIndex"] == 0
    assert key in body["Errors"][0]["What"]

    # the failing op is second: the set before it must not be applied
    resp = http("PUT", "/v1/txn", json=[{"KV": {"Verb": "set", "Key": untouched, "Value": b64(b"no")}}] + stale)
    assert resp.status_code == 409
    assert resp.json()["Errors"][0]["OpIndex"] == 1
    for r in readers:
        assert r.kv.get(untouched)[1] is None


# --------------------------------------------------------------------------------------------------
# Catalog


def test_catalog_register_query_deregister(c, readers, cleanup):
    node, service, sid, other_sid = uid("node"), uid("svc"), uid("id"), uid("id")
    register_external(c, cleanup, node, service, sid, status="passing", tags=["primary", "v1"])
    # a second service on the same node, to see that deregistering one keeps the other
    register_external(c, cleanup, node, service + "-other", other_sid, port=6432)

    for r in readers:
        _, nodes = r.catalog.nodes()
        assert [n["Address"] for n in nodes if n["Node"] == node] == ["192.0.2.10"]

        _, services = r.catalog.services()
        assert sorted(services[service]) == ["primary", "v1"]

        _, entries = r.catalog.service(service)
        assert len(entries) == 1
        e = entries[0]
        assert (e["Node"], e["Address"], e["ServiceID"], e["ServiceName"]) == (node, "192.0.2.10", sid, service)
        assert e["ServicePort"] == 5432
        assert e["ServiceTags"] == ["primary", "v1"]

        _, tagged = r.catalog.service(service, tag="primary")
        assert [t["ServiceID"] for t in tagged] == [sid]
        assert r.catalog.service(service, tag="nope")[1] == []

        _, node_info = r.catalog.node(node)
        assert node_info["Node"]["Node"] == node
        assert node_info["Node"]["Address"] == "192.0.2.10"
        assert set(node_info["Services"]) == {sid, other_sid}
        assert node_info["Services"][sid]["Service"] == service
        assert node_info["Services"][sid]["Port"] == 5432

    assert c.catalog.deregister(node, service_id=sid) is True
    for r in readers:
        assert r.catalog.service(service)[1] == []  # an empty list, not null
        assert service not in r.catalog.services()[1]
        assert set(r.catalog.node(node)[1]["Services"]) == {other_sid}

    assert c.catalog.deregister(node) is True
    for r in readers:
        assert node not in [n["Node"] for n in r.catalog.nodes()[1]]
        assert r.catalog.service(service + "-other")[1] == []


# --------------------------------------------------------------------------------------------------
# Health


def _find_check(checks, node, check_id):
    return next((ch for ch in checks if ch["Node"] == node and ch["CheckID"] == check_id), None)


def test_health_passing_service(c, readers, cleanup):
    node, service, sid = uid("node"), uid("svc"), uid("id")
    check = register_external(c, cleanup, node, service, sid, status="passing", port=8080)

    for r in readers:
        _, entries = r.health.service(service, passing=True)
        assert len(entries) == 1
        e = entries[0]
        assert e["Node"]["Node"] == node
        assert e["Service"]["ID"] == sid
        assert e["Service"]["Service"] == service
        assert e["Service"]["Port"] == 8080
        assert [(ch["CheckID"], ch["Status"]) for ch in e["Checks"]] == [(check["CheckID"], "passing")]

        _, checks = r.health.checks(service)
        assert len(checks) == 1
        ch = checks[0]
        assert (ch["Node"], ch["CheckID"], ch["Status"]) == (node, check["CheckID"], "passing")
        assert (ch["ServiceID"], ch["ServiceName"]) == (sid, service)

        _, node_checks = r.health.node(node)
        assert _find_check(node_checks, node, check["CheckID"])["Status"] == "passing"

        assert _find_check(r.health.state("passing")[1], node, check["CheckID"]) is not None
        assert _find_check(r.health.state("critical")[1], node, check["CheckID"]) is None


def test_health_critical_service(c, readers, cleanup):
    node, service, sid = uid("node"), uid("svc"), uid("id")
    check = register_external(c, cleanup, node, service, sid, status="critical")

    for r in readers:
        assert r.health.service(service, passing=True)[1] == []
        _, entries = r.health.service(service)
        assert [e["Service"]["ID"] for e in entries] == [sid]
        assert entries[0]["Checks"][0]["Status"] == "critical"

        critical = _find_check(r.health.state("critical")[1], node, check["CheckID"])
        assert critical is not None
        assert critical["ServiceID"] == sid
        assert _find_check(r.health.state("any")[1], node, check["CheckID"]) is not None
        assert _find_check(r.health.state("passing")[1], node, check["CheckID"]) is None

    # registering the check again as passing brings the instance back
    register_external(c, cleanup, node, service, sid, status="passing")
    for r in readers:
        assert [e["Service"]["ID"] for e in r.health.service(service, passing=True)[1]] == [sid]
        assert _find_check(r.health.state("critical")[1], node, check["CheckID"]) is None


# --------------------------------------------------------------------------------------------------
# Agent


def agent_health(name):
    """GET /v1/agent/health/service/name/<name>: py-consul has no wrapper for it."""
    return http("GET", f"/v1/agent/health/service/name/{name}")


def test_agent_service_with_ttl_check(c, readers, cleanup):
    service, sid = uid("svc"), uid("id")
    check_id = f"service:{sid}"  # Consul's id for a service's only check when none is given
    # Check.ttl("30s") is {"ttl": "30s"}; py-consul sends it in a lowercase "checks" list
    assert c.agent.service.register(service, service_id=sid, port=8080, tags=["v1", "blue"],
                                    check=consul.Check.ttl("30s")) is True
    cleanup(lambda: c.agent.service.deregister(sid))

    svc = c.agent.services()[sid]
    assert (svc["ID"], svc["Service"], svc["Port"], svc["Tags"]) == (sid, service, 8080, ["v1", "blue"])

    ch = c.agent.checks()[check_id]
    assert ch["Status"] == "critical"  # a TTL check starts critical until its first pass
    assert (ch["ServiceID"], ch["ServiceName"], ch["Type"]) == (sid, service, "ttl")

    def registered_but_not_passing(r):
        assert [e["Service"]["ID"] for e in r.health.service(service)[1]] == [sid]
        assert r.health.service(service, passing=True)[1] == []

    for r in readers:
        eventually(lambda: registered_but_not_passing(r))

    assert c.agent.check.ttl_pass(check_id, notes="ok") is True
    assert c.agent.checks()[check_id]["Status"] == "passing"

    def passing(r):
        _, entries = r.health.service(service, passing=True)
        assert len(entries) == 1
        assert entries[0]["Service"]["Port"] == 8080
        assert [(x["CheckID"], x["Status"], x["Output"]) for x in entries[0]["Checks"]
                if x["CheckID"] == check_id] == [(check_id, "passing", "ok")]

    for r in readers:
        eventually(lambda: passing(r))

    resp = agent_health(service)
    assert resp.status_code == 200
    assert [s["AggregatedStatus"] for s in resp.json()] == ["passing"]

    # the agent's per-name health answers 429 while the worst check is warning...
    assert c.agent.check.ttl_warn(check_id, notes="slow") is True
    resp = agent_health(service)
    assert resp.status_code == 429
    body = resp.json()
    assert body[0]["AggregatedStatus"] == "warning"
    assert body[0]["Service"]["ID"] == sid
    assert [(x["CheckID"], x["Status"], x["Output"]) for x in body[0]["Checks"]] == [(check_id, "warning", "slow")]

    # ... and 503 while it is critical
    assert c.agent.check.ttl_fail(check_id, notes="down") is True
    resp = agent_health(service)
    assert resp.status_code == 503
    assert resp.json()[0]["AggregatedStatus"] == "critical"

    def not_passing(r):
        assert r.health.service(service, passing=True)[1] == []

    for r in readers:
        eventually(lambda: not_passing(r))

    assert c.agent.service.deregister(sid) is True
    assert sid not in c.agent.services()
    assert check_id not in c.agent.checks()

    def gone(r):
        assert r.catalog.service(service)[1] == []

    for r in readers:
        eventually(lambda: gone(r))


def test_agent_ttl_update_of_unknown_check_fails(c):
    check_id = uid("nocheck")
    with pytest.raises(consul.ConsulException):
        c.agent.check.ttl_pass(check_id)
    resp = http("PUT", f"/v1/agent/check/pass/{check_id}")
    assert resp.status_code >= 400
    assert check_id in resp.text


def test_agent_self_and_members(readers):
    for r in readers:
        me = r.agent.self()
        assert isinstance(me["Config"]["Datacenter"], str) and me["Config"]["Datacenter"]
        assert me["Config"]["NodeName"]

        members = r.agent.members()
        assert members
        assert all(m["Name"] and m["Addr"] for m in members)
        assert me["Config"]["NodeName"] in [m["Name"] for m in members]
    if len(readers) > 1:
        assert len(readers[0].agent.members()) >= len(readers)


# --------------------------------------------------------------------------------------------------
# Blocking queries


def test_blocking_kv_get_wakes_on_change(c, readers, prefix):
    key = prefix + "watched"
    assert c.kv.put(key, "before") is True
    index, _ = c.kv.get(key)

    # one watcher per server: the write goes through the first, every one must wake
    with concurrent.futures.ThreadPoolExecutor(len(readers)) as pool:
        watchers = [pool.submit(r.kv.get, key, index=index, wait="10s") for r in readers]
        time.sleep(0.5)
        assert not any(w.done() for w in watchers), "blocking query returned before any change"

        written = time.monotonic()
        assert c.kv.put(key, "after") is True
        for w in watchers:
            new_index, entry = w.result(timeout=3)
            assert time.monotonic() - written < 3
            assert int(new_index) > int(index)
            assert entry["Value"] == b"after"


def test_blocking_kv_get_times_out_with_same_index(c, readers, prefix):
    key = prefix + "quiet"
    assert c.kv.put(key, "still") is True
    index, _ = c.kv.get(key)

    for r in readers:
        started = time.monotonic()
        new_index, entry = r.kv.get(key, index=index, wait="1s")
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed <= 5, f"wait=1s returned after {elapsed:.2f} s"
        assert new_index == index
        assert entry["Value"] == b"still"


def test_blocking_health_service_wakes_on_new_instance(c, readers, cleanup):
    node, service = uid("node"), uid("svc")
    first, second = uid("id"), uid("id")
    register_external(c, cleanup, node, service, first, status="passing")
    index, entries = c.health.service(service)
    assert len(entries) == 1

    with concurrent.futures.ThreadPoolExecutor(len(readers)) as pool:
        watchers = [pool.submit(r.health.service, service, index=index, wait="10s") for r in readers]
        time.sleep(0.5)
        assert not any(w.done() for w in watchers), "blocking query returned before any change"

        register_external(c, cleanup, node, service, second, status="passing", port=5433)
        for w in watchers:
            new_index, entries = w.result(timeout=3)
            assert int(new_index) > int(index)
            assert sorted(e["Service"]["ID"] for e in entries) == sorted([first, second])


# --------------------------------------------------------------------------------------------------
# Status


def test_status_leader_and_peers(readers):
    leaders = set()
    for r in readers:
        leader = r.status.leader()
        assert re.fullmatch(r"\S+:\d+", leader), leader
        leaders.add(leader)
        peers = r.status.peers()
        assert isinstance(peers, list)
        assert len(peers) >= len(readers)
        assert leader in peers
    assert len(leaders) == 1, f"servers disagree on the leader: {leaders}"


# --------------------------------------------------------------------------------------------------
# Bad input: errors a client can act on, never a 200 or a 5xx


def test_kv_bad_flags_rejected(c, prefix):
    key = prefix + "flags"
    resp = http("PUT", f"/v1/kv/{key}?flags=abc", data=b"x")
    assert resp.status_code == 400  # Consul: 500
    with pytest.raises(consul.ConsulException, match=r"^400"):
        c.kv.put(key, "x", flags="abc")
    assert c.kv.get(key)[1] is None


def test_kv_acquire_with_unknown_session_rejected(c, prefix):
    key = prefix + "lock"
    unknown = str(uuid.uuid4())
    resp = http("PUT", f"/v1/kv/{key}?acquire={unknown}", data=b"x")
    assert resp.status_code == 400  # Consul: 500 'invalid session "..."'
    assert "session" in resp.text.lower()
    assert c.kv.get(key)[1] is None


@pytest.mark.parametrize(
    "method, path, body, status, mentions",
    [
        pytest.param("GET", "/v1/kv/{key}?index=abc", None, 400, "index", id="kv-bad-index"),
        pytest.param("GET", "/v1/kv/{key}?index=1&wait=xyz", None, 400, "wait", id="kv-bad-wait"),
        pytest.param("PUT", "/v1/session/create", b"{not json", 400, None, id="session-malformed-json"),
        pytest.param("PUT", "/v1/session/create", b'{"TTL": "1s"}', 400, "ttl", id="session-ttl-too-short"),
        pytest.param("PUT", "/v1/catalog/register", b'{"Address": "1.2.3.4"}', 400, "node",
                     id="catalog-register-without-node"),
        pytest.param("GET", "/v1/nope", None, 404, None, id="unknown-endpoint"),
        pytest.param("DELETE", "/v1/status/leader", None, 405, None, id="wrong-method"),
    ],
)
def test_bad_request(method, path, body, status, mentions):
    resp = http(method, path.format(key=uid("kv")), data=body)
    assert resp.status_code == status, resp.text
    if mentions:
        assert mentions in resp.text.lower()
