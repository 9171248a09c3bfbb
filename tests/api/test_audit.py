"""Every API call is one audit event naming principal, access key, source, operation, key,
outcome and AWS error code; the hash chain verifies after a burst of concurrent calls."""

import threading
import time

from kmsapi import raises_code, user_arn

# The server may write audit events in batches; an event must be in the trail within this
# long of its answer (and at once after a graceful stop).
AUDIT_DELAY = 5.0


def events(api):
    return api.keystore.audit()


def last_seq(api):
    evs = api.keystore.audit("--limit", "1")
    return max((e["Seq"] for e in evs), default=0)


def new_events(api, since, expect=None, principal=None):
    """Events after Seq `since` (of `principal` if given), in Seq order; waits up to
    AUDIT_DELAY for `expect` of them to be there."""
    deadline = time.monotonic() + AUDIT_DELAY
    while True:
        evs = [e for e in events(api) if e["Seq"] > since and (principal is None or e.get("PrincipalArn") == principal)]
        if expect is None or len(evs) >= expect or time.monotonic() > deadline:
            return sorted(evs, key=lambda e: e["Seq"])
        time.sleep(0.1)


def settled_seq(api, alice_calls):
    """The last Seq once alice's first `alice_calls` API calls are in the trail: events
    after it belong to what the test does next."""
    assert len(new_events(api, 0, expect=alice_calls, principal=user_arn("alice"))) == alice_calls
    return last_seq(api)


def by_op(evs, op, who):
    found = [e for e in evs if e["Operation"] == op and e.get("PrincipalArn") == user_arn(who)]
    assert len(found) == 1, f"{op} by {who}: {found}"
    return found[0]


def test_one_event_per_call_with_identity(fresh_api):
    api = fresh_api
    key = api.new_key()
    since = settled_seq(api, 1)
    blob = api.alice.encrypt(KeyId=key, Plaintext=b"audited")["CiphertextBlob"]
    api.alice.decrypt(CiphertextBlob=blob)
    with raises_code("AccessDeniedException"):
        api.bob.decrypt(CiphertextBlob=blob)
    with raises_code("NotFoundException"):
        api.alice.describe_key(KeyId="alias/missing")
    evs = new_events(api, since, expect=4)
    assert sorted(e["Operation"] for e in evs) == ["Decrypt", "Decrypt", "DescribeKey", "Encrypt"], evs
    enc, dec = by_op(evs, "Encrypt", "alice"), by_op(evs, "Decrypt", "alice")
    denied, missing = by_op(evs, "Decrypt", "bob"), by_op(evs, "DescribeKey", "alice")
    for e, who in [(enc, "alice"), (dec, "alice"), (denied, "bob"), (missing, "alice")]:
        assert e["PrincipalArn"] == user_arn(who), e
        assert e["AccessKeyId"] == api.creds[who]["AccessKeyId"], e
        assert e["Source"].startswith("127.0.0.1"), e
    assert enc["KeyId"] == key and dec["KeyId"] == key and denied["KeyId"] == key
    assert enc["Outcome"] == "Success" and not enc.get("ErrorCode")
    assert denied["Outcome"] != "Success" and denied["ErrorCode"] == "AccessDeniedException", denied
    assert missing["Outcome"] != "Success" and missing["ErrorCode"] == "NotFoundException", missing
    # Nothing secret in the trail.
    assert "audited" not in repr(evs)
    for c in api.creds.values():
        assert c["SecretAccessKey"] not in repr(evs)


def test_auth_failures_are_audited(fresh_api):
    from kmsapi import make_client

    api = fresh_api
    since = last_seq(api)
    with raises_code("InvalidSignatureException"):
        make_client(api.endpoint, dict(api.creds["alice"], SecretAccessKey="C" * 40)).list_keys()
    with raises_code("UnrecognizedClientException"):
        make_client(api.endpoint, {"AccessKeyId": "AKIAUNKNOWNUNKNOWN00", "SecretAccessKey": "x" * 40}).list_keys()
    codes = sorted(e.get("ErrorCode") for e in new_events(api, since, expect=2))
    assert codes == ["InvalidSignatureException", "UnrecognizedClientException"], codes


def test_audit_filters(fresh_api):
    api = fresh_api
    key = api.new_key()
    with raises_code("AccessDeniedException"):
        api.bob.encrypt(KeyId=key, Plaintext=b"x")
    api.alice.encrypt(KeyId=key, Plaintext=b"x")
    assert len(new_events(api, 0, expect=2, principal=user_arn("alice"))) == 2
    assert len(new_events(api, 0, expect=1, principal=user_arn("bob"))) == 1
    bob = api.keystore.audit("--principal", user_arn("bob"))
    assert bob and all(e["PrincipalArn"] == user_arn("bob") for e in bob)
    by_key = api.keystore.audit("--access-key-id", api.creds["alice"]["AccessKeyId"])
    assert {e["Operation"] for e in by_key} >= {"CreateKey", "Encrypt"}
    denied = api.keystore.audit("--error-code", "AccessDeniedException")
    assert [e["PrincipalArn"] for e in denied] == [user_arn("bob")]
    assert api.keystore.audit("--denied") and all(e["Outcome"] != "Success" for e in api.keystore.audit("--denied"))
    from_loopback = api.keystore.audit("--source", "127.0.0.1")
    assert len(from_loopback) == 3 and all(e["Source"].startswith("127.0.0.1:") for e in from_loopback)
    assert api.keystore.audit("--source", "unix") == []
    one = from_loopback[0]["Source"]
    assert [e["Source"] for e in api.keystore.audit("--source", one)] == [one] * len(
        [e for e in from_loopback if e["Source"] == one])


def test_concurrent_burst_loses_no_event_and_chain_verifies(fresh_api):
    api = fresh_api
    key = api.new_key()
    blob = api.alice.encrypt(KeyId=key, Plaintext=b"burst")["CiphertextBlob"]
    since = settled_seq(api, 2)
    threads, calls, errors = 8, 25, []

    def worker(n):
        client = api.server.client(api.creds["alice"])
        try:
            for i in range(calls):
                if i % 3 == 0:
                    client.encrypt(KeyId=key, Plaintext=b"x")
                elif i % 3 == 1:
                    client.decrypt(CiphertextBlob=blob)
                else:
                    client.generate_data_key(KeyId=key, KeySpec="AES_256")
        except Exception as e:  # collected and asserted below
            errors.append(repr(e))

    def cli_writer():
        # The CLI writes to the same keystore during the burst (new keys, its own audit
        # events): neither side may see SQLITE_BUSY.
        try:
            for i in range(5):
                api.keystore.run(["key", "create", "--alias", f"alias/during-burst-{i}"])
                api.keystore.run(["key", "list"])
        except Exception as e:
            errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    ts.append(threading.Thread(target=cli_writer))
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not errors, errors[:3]
    api_events = new_events(api, since, expect=threads * calls, principal=user_arn("alice"))
    evs = new_events(api, since)
    assert len(api_events) == threads * calls
    assert all(e["Outcome"] == "Success" for e in api_events)
    seqs = [e["Seq"] for e in evs]
    assert len(seqs) == len(set(seqs))
    api.keystore.run(["audit", "verify"])
