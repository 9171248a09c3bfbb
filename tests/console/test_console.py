"""The web console in a real browser (headless Chromium through chromedriver): sign-in by a
one-time link from `kmsfs console` and by an access key, the pages (keys with the deletion
countdown, one key, mounts and volumes, the audit trail with filters and paging), the
actions behind their confirmation page, CSRF, key policies for the signed-in principal, and
HTML escaping of every user value. Screenshots of the pages are taken (docs/ keeps a set)."""

import datetime
import http.client
import json
import re
import ssl
import subprocess
import time
import urllib.parse

import pytest
from selenium.common.exceptions import NoAlertPresentException, NoSuchElementException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from kmsapi import Keystore, Server, kmsfs_bin, kmsfs_test_clock_bin, raises_code, user_arn

BOB = user_arn("bob")
XSS = '<script>window.__kmsfs_xss = 1; alert("xss")</script><img src=x onerror="window.__kmsfs_xss = 2">'


def login_link(api):
    """`kmsfs console`: the URL alone on the last line of stdout."""
    out = api.keystore.run(["console"]).stdout.decode()
    last = out.rstrip("\n").split("\n")[-1]
    assert re.fullmatch(r"https?://127\.0\.0\.1:\d+/console/login\?token=[0-9a-f]{64}", last), out
    assert last.startswith(api.endpoint), (last, api.endpoint)
    return last


def sign_in(browser, api):
    browser.get(login_link(api))
    assert browser.current_url.endswith("/console/keys"), browser.current_url
    return browser


def click(browser, element):
    """Clicks a link or submit button and waits for the page it leads to."""
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 15).until(lambda _: is_stale(old))
    WebDriverWait(browser, 15).until(lambda d: d.execute_script("return document.readyState") == "complete")


def is_stale(element):
    """Whether `element` is gone with its page. Chromedriver answers a lookup of a node of a
    page that is being replaced either as a stale element or, mid-navigation, as an inspector
    error ("Node with given id does not belong to the document"): both mean it is gone."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
        return False
    except StaleElementReferenceException:
        return True
    except WebDriverException as e:
        if "does not belong to the document" in str(e):
            return True
        raise


def text(browser, css):
    return browser.find_element(By.CSS_SELECTOR, css).text


def has(browser, css):
    return len(browser.find_elements(By.CSS_SELECTOR, css)) > 0


def no_script_ran(browser):
    """Nothing injected ran: no script or img element exists, no alert is open, and the
    marker the payload would set is unset."""
    assert browser.execute_script("return document.getElementsByTagName('script').length") == 0
    assert browser.execute_script("return document.getElementsByTagName('img').length") == 0
    assert browser.execute_script("return window.__kmsfs_xss === undefined")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text


def raw_request(api, method, path, body=None, cookie=None):
    """(status, headers, body text) of one request to the server, no redirect followed."""
    u = urllib.parse.urlsplit(api.endpoint)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["Cookie"] = f"kmsfs_console={cookie}"
    conn.request(method, path, body=urllib.parse.urlencode(body or {}), headers=headers)
    resp = conn.getresponse()
    out = resp.status, resp.getheaders(), resp.read().decode(errors="replace")
    conn.close()
    return out


def session_of(browser):
    c = browser.get_cookie("kmsfs_console")
    assert c, "no session cookie"
    return c["value"]


def csrf_of(browser):
    return browser.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")


def shot(browser, screenshot_dir, name):
    path = screenshot_dir / f"console-{name}.png"
    browser.set_window_size(1200, 900)
    height = browser.execute_script("return Math.min(document.body.scrollHeight + 20, 1400)")
    browser.set_window_size(1200, max(height, 500))
    assert browser.save_screenshot(str(path)), path
    assert path.stat().st_size > 5000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    browser.set_window_size(1200, 900)


def audit(api, *args):
    return api.keystore.audit(*args)


# --- sign-in ---------------------------------------------------------------------------


def test_login_link_signs_in_once(api, browser):
    link = login_link(api)
    browser.get(link)
    assert browser.current_url.endswith("/console/keys")
    assert text(browser, "#principal") == "root (uid 0)"
    cookie = browser.get_cookie("kmsfs_console")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["secure"] is False
    # The same link again: refused, and it starts no session.
    status, headers, body = raw_request(api, "GET", urllib.parse.urlsplit(link).path + "?" + urllib.parse.urlsplit(link).query)
    assert status == 403 and "used already or has expired" in body
    assert not any(k.lower() == "set-cookie" for k, _ in headers)
    events = audit(api, "--operation", "ConsoleLogin")
    assert events and events[-1]["Outcome"] == "Success" and events[-1]["Uid"] == 0


def test_pages_need_a_session(api):
    status, headers, _ = raw_request(api, "GET", "/console/keys")
    assert status == 303 and dict((k.lower(), v) for k, v in headers)["location"] == "/console/login"
    status, _, _ = raw_request(api, "POST", "/console/key/x/disable", {"csrf": "x"})
    assert status == 403
    # Login tokens come only over the Unix socket (its peer's uid), never over TCP.
    status, _, body = raw_request(api, "POST", "/console/token")
    assert status == 403 and "Unix socket" in body


def test_a_wrong_secret_is_refused_and_audited(api, other_browser):
    b = other_browser
    b.get(api.endpoint + "/console/login")
    b.find_element(By.NAME, "access_key_id").send_keys(api.creds["carol"]["AccessKeyId"])
    b.find_element(By.NAME, "secret_access_key").send_keys("not-the-secret")
    click(b, b.find_element(By.CSS_SELECTOR, "#login button"))
    assert "wrong" in text(b, "#error")
    assert b.get_cookie("kmsfs_console") is None
    denied = audit(api, "--operation", "ConsoleLogin", "--denied")
    assert denied and denied[-1]["AccessKeyId"] == api.creds["carol"]["AccessKeyId"]


def test_session_cookie_is_secure_over_tls(request, tmp_path):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )
    ks = Keystore()
    request.addfinalizer(ks.cleanup)
    server = Server(ks, ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")])
    request.addfinalizer(server.stop)
    assert server.endpoint.startswith("https://")
    link = ks.run(["console"]).stdout.decode().rstrip("\n").split("\n")[-1]
    assert link.startswith(server.endpoint + "/console/login?token=")
    u = urllib.parse.urlsplit(link)
    conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=20, context=ssl._create_unverified_context())
    conn.request("GET", f"{u.path}?{u.query}")
    resp = conn.getresponse()
    cookie = resp.getheader("set-cookie")
    conn.close()
    assert resp.status == 303
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and cookie.rstrip().endswith("; Secure"), cookie


# --- pages -------------------------------------------------------------------------------


def test_keys_page_lists_keys_with_rotation_and_countdown(api, browser, screenshot_dir):
    finance = api.new_key("finance reports")
    api.alice.create_alias(AliasName="alias/finance", TargetKeyId=finance)
    api.alice.enable_key_rotation(KeyId=finance, RotationPeriodInDays=180)
    old = api.new_key("old backups")
    api.alice.create_alias(AliasName="alias/old-backups", TargetKeyId=old)
    deletion = api.alice.schedule_key_deletion(KeyId=old, PendingWindowInDays=7)["DeletionDate"]
    sign_in(browser, api)
    row = browser.find_element(By.ID, f"key-{finance}")
    assert "alias/finance" in row.text and "Enabled" in row.text and "SYMMETRIC_DEFAULT" in row.text
    assert "every 180 days" in row.text and "next 20" in row.text
    countdown = text(browser, f"#countdown-{old}")
    assert re.fullmatch(r"destroyed in (6 days 23 h|7 days 0 h)", countdown), countdown
    expected_date = deletion.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert expected_date in browser.find_element(By.ID, f"key-{old}").text
    shot(browser, screenshot_dir, "keys")


def test_key_page_shows_metadata_versions_policy_grants_tags_and_use(api, browser, screenshot_dir):
    key = api.new_key("payroll exports", Tags=[{"TagKey": "team", "TagValue": "finance"}])
    api.alice.create_alias(AliasName="alias/payroll", TargetKeyId=key)
    api.alice.rotate_key_on_demand(KeyId=key)
    grant = api.alice.create_grant(
        KeyId=key, GranteePrincipal=BOB, Operations=["Decrypt", "Encrypt"], Name="nightly-export",
        Constraints={"EncryptionContextSubset": {"dept": "finance"}},
    )
    for _ in range(5):
        api.alice.encrypt(KeyId=key, Plaintext=b"x")
    # Earlier use, from the command line with the KMS clock set back: spread over the week.
    for hours_ago in (150, 149, 120, 97, 96, 75, 50, 49, 30, 26, 8):
        env = dict(api.keystore.env(), KMSFS_CLOCK_OFFSET_SECS=str(-3600 * hours_ago))
        subprocess.run([kmsfs_test_clock_bin(), "encrypt", "--key", "alias/payroll"], input=b"x", env=env,
                       capture_output=True, check=True)
    for _ in range(2):
        with raises_code("AccessDeniedException"):
            api.carol.encrypt(KeyId=key, Plaintext=b"x")
    sign_in(browser, api)
    browser.get(f"{api.endpoint}/console/key/{key}")
    assert "payroll exports" == text(browser, "#description")
    metadata = text(browser, "#metadata")
    assert key in metadata and f"key/{key}" in metadata and "alias/payroll" in metadata
    versions = browser.find_elements(By.CSS_SELECTOR, "#versions tr")
    assert len(versions) == 3, "a header and two versions"
    assert "ON_DEMAND" in text(browser, "#versions")
    policy = text(browser, "#policy")
    assert json.loads(policy)["Statement"] and "\n    " in policy, "pretty-printed JSON"
    grants = text(browser, "#grants")
    assert "nightly-export" in grants and BOB in grants and "Decrypt, Encrypt" in grants and "dept=finance" in grants
    assert "team" in text(browser, "#tags") and "finance" in text(browser, "#tags")
    assert text(browser, "#last-use").startswith("Encrypt at ")
    # The chart: allowed calls drawn, the denials red and marked.
    svg = browser.find_element(By.ID, "usage-chart")
    assert len(svg.find_elements(By.CSS_SELECTOR, "rect.allowed")) >= 10, "one bar per hour with calls"
    assert svg.find_elements(By.CSS_SELECTOR, "rect.denied") and svg.find_elements(By.CSS_SELECTOR, ".denied-mark")
    assert browser.find_element(By.ID, "denied-total").text == "denied 2"
    # Revoke the grant, through its confirmation page.
    click(browser, browser.find_element(By.CSS_SELECTOR, "#grants a.btn"))
    assert "/confirm?action=revoke-grant" in browser.current_url
    click(browser, browser.find_element(By.ID, "confirm"))
    assert text(browser, "#notice") == "Grant revoked."
    assert api.alice.list_grants(KeyId=key)["Grants"] == []
    ev = audit(api, "--operation", "RevokeGrant")[-1]
    assert ev["Outcome"] == "Success" and ev["Uid"] == 0 and ev["Source"].startswith("127.0.0.1:")
    assert grant["GrantId"]
    browser.get(f"{api.endpoint}/console/key/{key}")
    shot(browser, screenshot_dir, "key")


def test_disable_and_enable_with_confirmation_audited(api, browser):
    key = api.new_key("to disable")
    sign_in(browser, api)
    browser.get(f"{api.endpoint}/console/key/{key}")
    assert not has(browser, "#action-enable")
    click(browser, browser.find_element(By.ID, "action-disable"))
    # Nothing happened yet: the confirmation page only.
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    assert "ENOKEY" in browser.page_source
    click(browser, browser.find_element(By.ID, "confirm"))
    assert has(browser, "#notice"), browser.find_element(By.TAG_NAME, "main").text
    assert text(browser, "#notice") == "Key disabled."
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    ev = [e for e in audit(api, "--operation", "DisableKey") if e["KeyId"] == key][-1]
    assert ev["Outcome"] == "Success" and ev["User"] == "root" and ev["Source"].startswith("127.0.0.1:")
    click(browser, browser.find_element(By.ID, "action-enable"))
    click(browser, browser.find_element(By.ID, "confirm"))
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"


def test_schedule_deletion_shows_window_and_date_first(api, browser, screenshot_dir):
    key = api.new_key("scheduled")
    sign_in(browser, api)
    browser.get(f"{api.endpoint}/console/key/{key}")
    click(browser, browser.find_element(By.ID, "action-schedule-deletion"))
    assert text(browser, "#window") == "30 days"
    now = datetime.datetime.now(datetime.timezone.utc)
    date30 = text(browser, "#deletion-date")
    assert date30[:10] in {(now + datetime.timedelta(days=30, seconds=s)).strftime("%Y-%m-%d") for s in (-5, 5)}
    Select(browser.find_element(By.NAME, "days")).select_by_value("7")
    click(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button"))
    assert text(browser, "#window") == "7 days"
    date7 = text(browser, "#deletion-date")
    assert date7 < date30
    shot(browser, screenshot_dir, "schedule-deletion")
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled", "shown, not done"
    click(browser, browser.find_element(By.ID, "confirm"))
    assert text(browser, "#notice").startswith("Deletion scheduled for ")
    meta = api.alice.describe_key(KeyId=key)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion" and meta["PendingDeletionWindowInDays"] == 7
    shown = datetime.datetime.strptime(date7, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert abs((meta["DeletionDate"] - shown).total_seconds()) < 5
    click(browser, browser.find_element(By.ID, "action-cancel-deletion"))
    click(browser, browser.find_element(By.ID, "confirm"))
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"


def test_state_changes_need_the_csrf_token(api, browser):
    key = api.new_key("csrf")
    sign_in(browser, api)
    cookie = session_of(browser)
    for form in ({}, {"csrf": "0" * 64}):
        status, _, body = raw_request(api, "POST", f"/console/key/{key}/disable", form, cookie=cookie)
        assert status == 403 and "CSRF" in body
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    browser.get(f"{api.endpoint}/console/key/{key}")
    status, headers, _ = raw_request(api, "POST", f"/console/key/{key}/disable", {"csrf": csrf_of(browser)}, cookie=cookie)
    assert status == 303
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"


def test_a_denied_principal_sees_no_button_and_gets_403(api, other_browser):
    key = api.new_key("alice's, bob may look")
    alice = user_arn("alice")
    api.alice.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": alice}, "Action": "kms:*", "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": BOB}, "Resource": "*",
             "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:ListGrants", "kms:ListResourceTags",
                        "kms:GetKeyLastUsage", "kms:ListKeyRotations"]},
        ],
    }))
    b = other_browser
    b.get(api.endpoint + "/console/login")
    b.find_element(By.NAME, "access_key_id").send_keys(api.creds["bob"]["AccessKeyId"])
    b.find_element(By.NAME, "secret_access_key").send_keys(api.creds["bob"]["SecretAccessKey"])
    click(b, b.find_element(By.CSS_SELECTOR, "#login button"))
    assert b.current_url.endswith("/console/keys")
    assert text(b, "#principal") == BOB
    b.get(f"{api.endpoint}/console/key/{key}")
    assert text(b, "#description") == "alice's, bob may look"
    assert not has(b, "#action-disable") and not has(b, "#action-schedule-deletion")
    # Posting anyway: refused by the key policy, as the API would, and audited for bob.
    status, _, body = raw_request(api, "POST", f"/console/key/{key}/disable", {"csrf": csrf_of(b)}, cookie=session_of(b))
    assert status == 403, (status, body)
    assert 'id="error"' in body
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    ev = [e for e in audit(api, "--operation", "DisableKey", "--principal", BOB) if e["KeyId"] == key][-1]
    assert ev["Outcome"] == "Denied" and ev["ErrorCode"] == "AccessDeniedException"
    assert ev["AccessKeyId"] == api.creds["bob"]["AccessKeyId"]
    # Bob's audit page shows only bob's calls.
    b.get(f"{api.endpoint}/console/audit")
    principals = {r.find_elements(By.TAG_NAME, "td")[2].text for r in b.find_elements(By.CSS_SELECTOR, "#audit tr.event")}
    assert principals == {BOB}, principals
    # Disabling bob's access key ends his session at the next request.
    api.keystore.run(["access-key", "disable", api.creds["bob"]["AccessKeyId"]])
    try:
        b.get(f"{api.endpoint}/console/keys")
        assert b.current_url.endswith("/console/login")
    finally:
        api.keystore.run(["access-key", "enable", api.creds["bob"]["AccessKeyId"]])


def test_user_values_are_escaped_and_nothing_runs(api, browser):
    key = api.new_key(XSS, Tags=[{"TagKey": "<script>alert(1)</script>", "TagValue": XSS}])
    api.alice.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Sid": "<script>alert(2)</script>", "Effect": "Allow",
                       "Principal": {"AWS": [user_arn("alice")]}, "Action": "kms:*", "Resource": "*"},
                      {"Effect": "Allow", "Principal": {"Uid": [0]}, "Action": "kms:*", "Resource": "*"}],
    }))
    sign_in(browser, api)
    no_script_ran(browser)
    assert browser.find_element(By.CSS_SELECTOR, f"#key-{key} .description").text == XSS
    browser.get(f"{api.endpoint}/console/key/{key}")
    no_script_ran(browser)
    assert text(browser, "#description") == XSS
    assert "<script>alert(1)</script>" in text(browser, "#tags")
    assert "<script>alert(2)</script>" in text(browser, "#policy")
    # A filter value echoed back into the audit form.
    browser.get(f"{api.endpoint}/console/audit?operation=" + urllib.parse.quote('"><script>alert(3)</script>'))
    no_script_ran(browser)
    assert browser.find_element(By.NAME, "operation").get_attribute("value") == '"><script>alert(3)</script>'


def test_audit_page_filters_pages_and_downloads(api, browser, screenshot_dir):
    key = api.new_key("audited")
    for _ in range(60):
        api.alice.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"dept": "finance"})
    for _ in range(3):
        with raises_code("AccessDeniedException"):
            api.carol.encrypt(KeyId=key, Plaintext=b"x")
    sign_in(browser, api)
    browser.get(f"{api.endpoint}/console/audit?key={key}")
    rows = browser.find_elements(By.CSS_SELECTOR, "#audit tr.event")
    assert len(rows) == 50
    seqs = [int(r.find_element(By.TAG_NAME, "td").text) for r in rows]
    assert seqs == sorted(seqs, reverse=True)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#audit tr.row-Denied")) == 3
    shot(browser, screenshot_dir, "audit")
    click(browser, browser.find_element(By.ID, "older"))
    older = [int(r.find_element(By.TAG_NAME, "td").text) for r in browser.find_elements(By.CSS_SELECTOR, "#audit tr.event")]
    assert older and max(older) < min(seqs)
    assert len(seqs) + len(older) == 64, "CreateKey, 60 allowed and 3 denied Encrypts"
    browser.get(f"{api.endpoint}/console/audit")
    browser.find_element(By.NAME, "key").send_keys(key)
    Select(browser.find_element(By.NAME, "outcome")).select_by_value("Denied")
    browser.find_element(By.NAME, "principal").send_keys(user_arn("carol"))
    browser.find_element(By.NAME, "since").send_keys("1h")
    click(browser, browser.find_element(By.CSS_SELECTOR, "#filters button"))
    denied = browser.find_elements(By.CSS_SELECTOR, "#audit tr.event")
    assert len(denied) == 3 and all("Denied" in r.text and user_arn("carol") in r.text for r in denied)
    browser.get(f"{api.endpoint}/console/audit?key={key}&until=2000-01-01")
    assert not browser.find_elements(By.CSS_SELECTOR, "#audit tr.event")
    # The download: CloudTrail's file shape, same filters.
    status, headers, body = raw_request(
        api, "GET", f"/console/audit/cloudtrail.json?key={key}&outcome=Denied", cookie=session_of(browser))
    assert status == 200 and "attachment" in dict((k.lower(), v) for k, v in headers)["content-disposition"]
    records = json.loads(body)["Records"]
    assert len(records) == 3 and {r["eventName"] for r in records} == {"Encrypt"}
    assert all(r["errorCode"] == "AccessDeniedException" and r["userIdentity"]["arn"] == user_arn("carol") for r in records)


def test_mounts_page_shows_mounts_and_volumes_seen(api, browser, screenshot_dir, tmp_path):
    ks = api.keystore
    ks.run(["key", "create", "--alias", "alias/vault"])
    cipher, plain = tmp_path / "vault.enc", tmp_path / "vault"
    plain.mkdir()
    ks.run(["volume", "init", str(cipher), "--key", "alias/vault"])
    ks.run(["mount", str(cipher), str(plain)])
    try:
        (plain / "hello.txt").write_text("hello")
        assert (plain / "hello.txt").read_text() == "hello"
        sign_in(browser, api)
        # The mount's audit events are committed by its writer in batches: wait for them.
        for _ in range(50):
            browser.get(f"{api.endpoint}/console/mounts")
            if "/hello.txt" in text(browser, "main"):
                break
            time.sleep(0.2)
        mounts = text(browser, "#mounts")
        assert str(plain) in mounts and str(cipher) in mounts
        assert has(browser, "#volumes"), browser.find_element(By.TAG_NAME, "main").text
        volume_id = json.loads((cipher / "kmsfs.volume").read_text())["volume_id"]
        assert volume_id in mounts
        volumes = text(browser, "#volumes")
        assert volume_id in volumes and "/hello.txt" in volumes
        shot(browser, screenshot_dir, "mounts")
    finally:
        ks.run(["umount", str(plain)], check=False)
