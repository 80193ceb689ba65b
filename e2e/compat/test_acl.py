"""ACLs as a Consul client library drives them: bootstrap, a policy, a token, then denied and allowed.

Runs only against a server started with ACLs on and default_policy deny, named by ROSTER_ACL_ADDR
(scripts/test.sh starts one); the bootstrap is one-shot, so the server must be fresh.
"""

import os
import time
import uuid

import consul
import pytest
import requests

ADDR = os.environ.get("ROSTER_ACL_ADDR")
pytestmark = pytest.mark.skipif(not ADDR, reason="ROSTER_ACL_ADDR is not set (needs a fresh server with ACLs on)")


def client(token=None):
    host, port = ADDR.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port), token=token)


def wait_for_leader():
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if requests.get(f"http://{ADDR}/v1/status/leader", timeout=2).json():
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.2)
    pytest.fail("no leader")


def test_bootstrap_policy_token_deny_and_allow():
    wait_for_leader()
    boot = client().acl.bootstrap()
    management = boot["SecretID"]
    assert boot["Policies"][0]["Name"] == "global-management"
    # Bootstrap is one-shot.
    with pytest.raises(consul.ConsulException):
        client().acl.bootstrap()

    admin = client(management)
    prefix = f"app-{uuid.uuid4().hex[:8]}/"
    # py-consul sends rules as JSON text: Consul's JSON rule syntax.
    policy = admin.acl.policy.create(
        name=f"rw-{prefix[:-1]}",
        rules={"key_prefix": {prefix: {"policy": "write"}}, "service_prefix": {"": {"policy": "read"}}},
    )
    token = admin.acl.token.create(policies_id=[policy["ID"]], description="compat test")
    app = client(token["SecretID"])

    # Allowed by the policy.
    assert app.kv.put(prefix + "x", b"1") is True
    assert app.kv.get(prefix + "x")[1]["Value"] == b"1"
    assert app.acl.token.read_self()["AccessorID"] == token["AccessorID"]
    # Denied: outside the prefix, and everything for the anonymous token under default deny.
    with pytest.raises(consul.ConsulException):
        app.kv.put("elsewhere/x", b"1")
    with pytest.raises(consul.ConsulException):
        client().kv.put(prefix + "y", b"1")
    with pytest.raises(consul.ConsulException):
        client().kv.get(prefix + "x")
    # A listing is filtered, not refused.
    assert admin.kv.put("elsewhere/x", b"1") is True
    index, keys = client(management).kv.get("", keys=True)
    assert prefix + "x" in keys
    r = requests.get(f"http://{ADDR}/v1/kv/?keys", headers={"X-Consul-Token": token["SecretID"]}, timeout=5)
    assert r.status_code == 200
    assert r.json() == [prefix + "x"]
    assert r.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"

    # Deleting the token takes effect at once.
    assert admin.acl.token.delete(token["AccessorID"]) is True
    with pytest.raises(consul.ConsulException):
        app.kv.put(prefix + "x", b"2")
