"""Races AWS defines an answer for: one alias name created at once by many callers, one
grant Name asked for at once, a key disabled while others use it."""

import threading
import time

from botocore.exceptions import ClientError

from kmsapi import user_arn


def run_all(n, fn):
    results, barrier = [None] * n, threading.Barrier(n)

    def go(i):
        barrier.wait()
        try:
            results[i] = ("ok", fn(i))
        except ClientError as e:
            results[i] = (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
        except Exception as e:  # transport failures are failures of the test
            results[i] = ("exception", repr(e))

    ts = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    return results


def test_one_alias_name_many_creators(api):
    keys = [api.new_key(f"race {i}") for i in range(8)]
    clients = [api.server.client(api.creds["alice"]) for _ in keys]
    results = run_all(8, lambda i: clients[i].create_alias(AliasName="alias/race", TargetKeyId=keys[i]))
    oks = [r for r in results if r[0] == "ok"]
    assert len(oks) == 1, results
    assert all(r[0] == "AlreadyExistsException" for r in results if r[0] != "ok"), results
    target = api.alice.describe_key(KeyId="alias/race")["KeyMetadata"]["KeyId"]
    assert target == keys[results.index(oks[0])]


def test_one_grant_name_many_requests(api):
    key = api.new_key()
    clients = [api.server.client(api.creds["alice"]) for _ in range(6)]
    results = run_all(6, lambda i: clients[i].create_grant(
        KeyId=key, GranteePrincipal=user_arn("bob"), Operations=["Decrypt"], Name="once")["GrantId"])
    assert all(r[0] == "ok" for r in results), results
    assert len({r[1] for r in results}) == 1, f"one Name, several grants: {results}"
    assert len(api.alice.list_grants(KeyId=key)["Grants"]) == 1


def test_disable_takes_effect_for_every_connection(api):
    """Once DisableKey has answered, no Encrypt that starts later succeeds, on any connection."""
    key = api.new_key()
    stop, disabled_at, late_successes, errors = threading.Event(), [None], [], []

    def worker():
        client = api.server.client(api.creds["alice"])
        while not stop.is_set():
            start = time.monotonic()
            try:
                client.encrypt(KeyId=key, Plaintext=b"x")
                if disabled_at[0] is not None and start > disabled_at[0]:
                    late_successes.append(start - disabled_at[0])
            except ClientError as e:
                if e.response["Error"]["Code"] != "DisabledException":
                    errors.append(e.response["Error"]["Code"])

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    time.sleep(0.5)
    api.alice.disable_key(KeyId=key)
    disabled_at[0] = time.monotonic()
    time.sleep(0.5)
    stop.set()
    for t in ts:
        t.join(timeout=30)
    assert not errors, errors[:5]
    assert not late_successes, f"{len(late_successes)} Encrypts started after DisableKey answered succeeded"
