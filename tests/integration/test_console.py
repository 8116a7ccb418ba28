"""The state console, driven in headless Chromium against a real worker, as a user uses it.

The console runs as ``state-tasks console`` in a subprocess on the deployment's broker
(its live feed's position kept under the test's own ``XDG_STATE_HOME``); the browser opens
it, watches a scope appear, opens a value, edits it, and sees the change arrive in the
live feed, read from the change log: values exactly (a 23 KB one too), each operation of a
batch, expiries, changes handlers make in a worker, and a notice when the log was trimmed
or is off. The access rules are checked over plain HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import OUR_VARIABLES, Deployment, adapter_yaml, own_db

from state_tasks.contrib.servers import free_port, wait_until

CLI = os.path.join(os.path.dirname(sys.executable), "state-tasks")
#: The live feed's promise: a change shows on the page within this many seconds.
FEED_DEADLINE_S = 2.0


class Console:
    """``state-tasks console`` in a subprocess, stopped by :meth:`stop`."""

    def __init__(
        self,
        workdir: Path,
        broker: str,
        backend: str,
        *args: str,
        port: int | None = None,
        queue_env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log_path = workdir / f"console-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
        # queue_env: the deployment's queue type (STATE_TASKS_QUEUE_TYPE), if any.
        env |= {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": backend, **(queue_env or {})}
        env["XDG_STATE_HOME"] = str(workdir / "state")  # where the feed keeps its position
        self.process = subprocess.Popen(
            [CLI, "console", "--port", str(self.port), *args],
            cwd=workdir,
            env=env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(self._up, 30, f"the console on port {self.port}", interval_s=0.1)

    def _up(self) -> bool:
        assert self.process.poll() is None, self.log()
        try:
            with urllib.request.urlopen(f"{self.url}/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # it answers (a 401 from a console with a token)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, parsed JSON or text, headers) of one request to the console."""
        data = None if body is None else json.dumps(body).encode()
        all_headers = {"content-type": "application/json"} if body is not None else {}
        all_headers |= headers or {}
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                raw, status, got = response.read(), response.status, dict(response.headers)
        except urllib.error.HTTPError as e:
            raw, status, got = e.read(), e.code, dict(e.headers)
        try:
            return status, json.loads(raw), got
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace"), got

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def console_factory(kv_deployment: Any, tmp_path: Path) -> Iterator[Any]:
    started: list[Console] = []

    def start(*args: str, broker: str | None = None, port: int | None = None) -> Console:
        console = Console(
            tmp_path,
            broker or kv_deployment.broker_url,
            broker or kv_deployment.backend_url,
            *args,
            port=port,
            queue_env=kv_deployment.queue_env if broker is None else None,
        )
        started.append(console)
        return console

    yield start
    for console in started:
        console.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,900")
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.implicitly_wait(0)
    yield chrome
    chrome.quit()


def wait_for(browser: Any, css: str, timeout_s: float = 10, text: str | None = None) -> Any:
    """The first element matching ``css`` (and holding ``text``), once it is there."""
    from selenium.webdriver.common.by import By

    found: list[Any] = []

    def there() -> bool:
        for element in browser.find_elements(By.CSS_SELECTOR, css):
            try:
                if text is None or text.lower() in element.text.lower():
                    found.append(element)
                    return True
            except Exception:  # replaced while we looked: look again
                continue
        return False

    wait_until(there, timeout_s, f"{css!r} holding {text!r} on the page", interval_s=0.05)
    return found[0]


def feed_row(browser: Any, scope: str, key: str, kind: str, text: str) -> str:
    css = f'#feed-rows li[data-scope="{scope}"][data-key="{key}"][data-kind="{kind}"]'
    row: str = wait_for(browser, css, FEED_DEADLINE_S, text).text
    return row


def set_editor(browser: Any, text: str) -> None:
    editor = wait_for(browser, "#editor")
    browser.execute_script(
        "arguments[0].value = arguments[1];"
        "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
        editor,
        text,
    )


def test_a_user_sees_a_scope_appear_opens_edits_and_watches_the_change_arrive(
    kv_deployment: Any, console_factory: Any, browser: Any
) -> None:
    # Given a console with writes allowed, open in the browser
    console = console_factory("--allow-writes")
    browser.get(console.url)
    wait_for(browser, "body[data-ready]")
    wait_for(browser, "#live-dot.live")
    scope = f"console-{uuid.uuid4().hex[:8]}"

    # When a service stores a value, the scope appears in the list (filtered by its prefix)
    kv_deployment.call("state::set", scope=scope, key="profile", value={"n": 1, "tags": ["a"]})
    filter_box = wait_for(browser, "#filter")
    filter_box.send_keys(scope)
    wait_for(browser, "#scopes a.scope-link", text=scope).click()

    # ...and the change made by that service is already in the live feed
    assert '{"n": 1, "tags": ["a"]}' in feed_row(
        browser, scope, "profile", "state:created", "created"
    )

    # Opening the key shows its value, its version and its expiry (none)
    wait_for(browser, "#keys a.key-link", text="profile").click()
    assert '"tags"' in wait_for(browser, "#value-tree", text='"tags"').text
    version = kv_deployment.call("state::get", scope=scope, key="profile", with_version=True)
    assert wait_for(browser, "#value-version").text == f"version {version['version']}"
    assert wait_for(browser, "#value-expiry").text == "expiry never"

    # The editor refuses invalid JSON before sending anything
    wait_for(browser, "#edit-value").click()
    set_editor(browser, '{"n": 2,')
    assert "not sent" in wait_for(browser, "#editor-note").text
    wait_for(browser, "#save").click()
    assert kv_deployment.call("state::get", scope=scope, key="profile") == {"n": 1, "tags": ["a"]}

    # A valid edit is stored, and arrives in the live feed within two seconds
    set_editor(browser, '{"n": 2, "tags": ["a", "b"]}')
    wait_for(browser, "#save").click()
    clicked = time.monotonic()
    row = feed_row(browser, scope, "profile", "state:updated", "→")
    assert time.monotonic() - clicked < FEED_DEADLINE_S + 0.5
    assert '"n":2' in row.replace(" ", "")
    assert kv_deployment.call("state::get", scope=scope, key="profile") == {
        "n": 2,
        "tags": ["a", "b"],
    }

    # A change by another client arrives within two seconds too
    sent = time.monotonic()
    kv_deployment.call(
        "state::update", scope=scope, key="profile", ops=[{"increment": {"field": "n"}}]
    )
    feed_row(browser, scope, "profile", "state:updated", '"n": 3')
    assert time.monotonic() - sent < FEED_DEADLINE_S

    # The open key says it changed; reloaded, it shows the version an edit is based on
    wait_for(browser, "#changed-note button", text="Reload").click()
    version = kv_deployment.call("state::get", scope=scope, key="profile", with_version=True)
    wait_for(browser, "#value-version", text=f"version {version['version']}")

    # An error from a state function shows as its code and message
    wait_for(browser, "#update-ops").click()
    set_editor(browser, '[{"increment": {"field": "tags"}}]')
    wait_for(browser, "#apply-ops").click()
    error = wait_for(browser, "#dialog-error", text="UPDATE_OP_ERROR")
    assert "op 0 (increment)" in error.text
    browser.find_element("css selector", "#dialog").send_keys("\ue00c")  # Escape

    # Deleting asks first, then the key is gone and the feed says so
    wait_for(browser, "#delete-value").click()
    wait_for(browser, "#confirm-delete").click()
    feed_row(browser, scope, "profile", "state:deleted", "deleted")
    assert kv_deployment.call("state::get", scope=scope, key="profile") is None


def test_with_writes_off_the_edit_is_refused(
    kv_deployment: Any, console_factory: Any, browser: Any
) -> None:
    console = console_factory()
    scope = f"console-ro-{uuid.uuid4().hex[:8]}"
    kv_deployment.call("state::set", scope=scope, key="k", value={"kept": True})
    browser.get(f"{console.url}/#/scope/{scope}/key/k")
    wait_for(browser, "#value-tree", text="kept")
    assert wait_for(browser, "#writes").text == "read-only"
    assert not wait_for(browser, "#edit-value").is_enabled()

    # Sent from the page all the same, the write is refused with its code and message
    answer = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/set', {method: 'POST', headers: {'content-type': 'application/json'},"
        " body: JSON.stringify({scope: arguments[0], key: 'k', value_json: '1'})})"
        ".then(r => r.json().then(j => done([r.status, j])));",
        scope,
    )
    assert answer[0] == 403
    assert answer[1]["error"]["code"] == "WRITES_DISABLED"
    assert kv_deployment.call("state::get", scope=scope, key="k") == {"kept": True}


def test_pages_of_a_big_scope_never_load_it_whole(kv_deployment: Any, console_factory: Any) -> None:
    scope = f"console-big-{uuid.uuid4().hex[:8]}"
    operations = [{"op": "set", "key": f"k{i:05d}", "value": i} for i in range(1000)]
    for start in range(0, 3000, 1000):
        kv_deployment.call(
            "state::batch",
            scope=scope,
            operations=[{**op, "key": f"{start}-{op['key']}"} for op in operations],
        )
    console = console_factory()
    status, page, _ = console.request(f"/api/keys?scope={scope}&limit=50")
    assert status == 200 and len(page["items"]) == 50 and page["cursor"]
    _, following, _ = console.request(f"/api/keys?scope={scope}&limit=50&cursor={page['cursor']}")
    assert following["items"][0]["key"] > page["items"][-1]["key"]
    _, scopes, _ = console.request(f"/api/scopes?prefix={scope}")
    assert scopes["items"] == [{"scope": scope, "count": 3000}]
    _, big, _ = console.request(f"/api/keys?scope={scope}&prefix=2000-k0099&limit=50")
    assert [item["key"] for item in big["items"]] == [f"2000-k0099{i}" for i in range(10)]


def test_writes_need_the_same_origin_and_the_loopback_host(
    kv_deployment: Any, console_factory: Any
) -> None:
    console = console_factory("--allow-writes")
    scope = f"console-csrf-{uuid.uuid4().hex[:8]}"
    body = {"scope": scope, "key": "k", "value_json": "1", "if_version": 0}
    status, answer, _ = console.request("/api/set", body, {"origin": "http://evil.example"})
    assert (status, answer["error"]["code"]) == (403, "FORBIDDEN")
    status, answer, _ = console.request("/api/set", body)  # no Origin, no Referer
    assert (status, answer["error"]["code"]) == (403, "FORBIDDEN")
    status, answer, _ = console.request(
        "/api/info", headers={"host": f"rebound.example:{console.port}"}
    )
    assert status == 403
    status, answer, _ = console.request("/api/set", body, {"origin": console.url})
    assert status == 200
    assert kv_deployment.call("state::get", scope=scope, key="k") == 1


def test_another_address_needs_the_token_and_the_link_works_once(
    kv_deployment: Any, console_factory: Any
) -> None:
    console = console_factory("--host", "0.0.0.0")
    wait_until(lambda: "/login?code=" in console.log(), 10, "the start-up lines")
    lines = console.log().splitlines()
    link = next(line for line in lines if "/login?code=" in line).split()[-1]
    token = next(line for line in lines if "token (Authorization" in line).split()[-1]
    path = link[link.index("/login") :]
    status, answer, _ = console.request("/api/info")
    assert (status, answer["error"]["code"]) == (401, "UNAUTHORIZED")
    status, _, _ = console.request("/api/info", headers={"authorization": "Bearer nope"})
    assert status == 401
    status, _, _ = console.request("/api/info", headers={"authorization": f"Bearer {token}"})
    assert status == 200

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as first:
        opener.open(f"{console.url}{path}", timeout=10)
    assert first.value.code == 303
    cookie = first.value.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    status, _, _ = console.request("/api/info", headers={"cookie": cookie.split(";")[0]})
    assert status == 200
    with pytest.raises(urllib.error.HTTPError) as again:
        opener.open(f"{console.url}{path}", timeout=10)
    assert again.value.code == 401


def test_no_password_reaches_the_page_or_the_log(console_factory: Any) -> None:
    console = console_factory("--call-timeout", "3", broker="redis://:s3cret-pw@127.0.0.1:1/0")
    status, info, _ = console.request("/api/info")
    assert (status, info["broker"]) == (200, "redis://:***@127.0.0.1:1/0")
    status, answer, _ = console.request("/api/scopes")
    assert status in (503, 504)
    assert answer["error"]["code"] in ("BROKER_UNREACHABLE", "TIMEOUT")
    time.sleep(3)  # the live feed's reads fail, and it logs why
    _status, page, _ = console.request("/")
    assert "s3cret-pw" not in json.dumps([info, answer]) + str(page)
    assert "s3cret-pw" not in console.log()
    assert "***" in console.log()


def test_the_open_page_keeps_its_live_feed_across_a_console_restart(
    kv_deployment: Any, console_factory: Any, browser: Any
) -> None:
    # A page that has seen a change of the console's first run...
    first = console_factory()
    browser.get(first.url)
    wait_for(browser, "#live-dot.live")
    scope = f"console-restart-{uuid.uuid4().hex[:8]}"
    kv_deployment.call("state::set", scope=scope, key="before", value=1)
    feed_row(browser, scope, "before", "state:created", "created")

    # ...stays open while the console restarts on the same port, and a change is made
    # while it is down
    first.stop()
    kv_deployment.call("state::set", scope=scope, key="while-down", value=2)
    second = console_factory(port=first.port)
    wait_for(browser, "#live-dot.live", timeout_s=15)  # the page reconnected by itself

    # The change made while it was down arrives, and the ones after the restart, each once
    feed_row(browser, scope, "while-down", "state:created", "created")
    for key in ("after1", "after2"):
        kv_deployment.call("state::set", scope=scope, key=key, value=3)
        feed_row(browser, scope, key, "state:created", "created")
    rows = browser.find_elements("css selector", f'#feed-rows li[data-scope="{scope}"]')
    assert sorted(row.get_attribute("data-key") for row in rows) == [
        "after1",
        "after2",
        "before",
        "while-down",
    ]
    assert second.process.poll() is None


def test_signed_out_the_sign_in_page_is_styled_and_cannot_be_framed(
    console_factory: Any, browser: Any
) -> None:
    console = console_factory("--host", "0.0.0.0")
    browser.delete_all_cookies()
    browser.get(console.url)
    form = wait_for(browser, "body.login form")
    # its stylesheet loaded without the token (the page is centred by it)
    assert browser.execute_script("return getComputedStyle(document.body).display") == "grid"
    assert form.value_of_css_property("border-radius") == "10px"
    status, _, headers = console.request("/")
    assert status == 401
    headers = {k.lower(): v for k, v in headers.items()}
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    # only the stylesheet: the page's script and the API need the token
    assert console.request("/static/console.css")[0] == 200
    assert console.request("/static/console.js")[0] == 401
    assert console.request("/api/info")[0] == 401


@pytest.fixture(scope="module")
def record_url(redis_server: Any) -> str:
    """The Redis db where the test handlers record each event they receive."""
    return str(redis_server.url(own_db()))


@pytest.fixture(scope="module")
def triggered(
    redis_server: Any, record_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A deployment whose worker loads the test handlers (a trigger's task can run)."""
    deployment = Deployment(redis_server, tmp_path_factory.mktemp("console-triggers"), None)
    deployment.worker(includes=("trigger_handlers",), RECORD_REDIS_URL=record_url)
    yield deployment
    deployment.close()


def test_versions_and_expiry_on_the_key_page_and_in_the_feed(
    triggered: Any, browser: Any, tmp_path: Path
) -> None:
    console = Console(
        tmp_path, triggered.broker_url, triggered.backend_url, queue_env=triggered.queue_env
    )
    try:
        scope = f"console-ttl-{uuid.uuid4().hex[:8]}"  # no trigger watches it
        browser.get(console.url)
        wait_for(browser, "#live-dot.live")
        # A key that expires in a few seconds: its page shows its version and when it expires
        done = triggered.call("state::set", scope=scope, key="session", value=1, ttl_ms=4000)
        row = feed_row(browser, scope, "session", "state:created", "created")
        assert f"v{done['version']}" in row
        browser.get(f"{console.url}/#/scope/{scope}/key/session")
        assert wait_for(browser, "#value-version").text == f"version {done['version']}"
        assert wait_for(browser, "#value-expiry", text="expiry in").text.endswith(")")
        # When it expires, the feed says so (the expiry is in the change log, with its value)
        css = (
            f'#feed-rows li[data-scope="{scope}"][data-key="session"]'
            '[data-kind="state:deleted"][data-reason="expired"]'
        )
        expired = wait_for(browser, css, 10, "expired").text
        assert f"v{done['version']}" in expired and expired.splitlines()[-1] == "1"  # its value
        # An ordinary delete is a deletion, not an expiry
        triggered.call("state::set", scope=scope, key="plain", value=2)
        triggered.call("state::delete", scope=scope, key="plain")
        deleted = feed_row(browser, scope, "plain", "state:deleted", "deleted")
        assert "expired" not in deleted
        # A lock's page says what it is: its holder, its token, when it expires
        held = triggered.call("state::lock", scope=scope, key="job", owner="w-7", ttl_ms=60_000)
        browser.get(f"{console.url}/#/scope/{scope}/key/job")
        assert wait_for(browser, "#value-lock").text == f"lock held by w-7 · token {held['token']}"
        assert wait_for(browser, "#value-expiry", text="expiry in").text.endswith(")")
    finally:
        console.stop()


def trigger_row(browser: Any, trigger_id: str) -> list[str]:
    """The cells of a trigger's row in the triggers view: function, scope, key, condition, id
    (its filter, runs and the last error, between condition and id, aside)."""
    row = wait_for(browser, f'#triggers tr[data-id="{trigger_id}"]')
    cells = [cell.text for cell in row.find_elements("css selector", "td")]
    return cells[:4] + cells[7:8]


def gone_from_page(browser: Any, css: str) -> None:
    wait_until(lambda: not browser.find_elements("css selector", css), 10, f"{css!r} gone")


def test_a_user_registers_and_unregisters_a_trigger_from_the_page(
    triggered: Any, record_url: str, browser: Any, tmp_path: Path
) -> None:
    console = Console(
        tmp_path,
        triggered.broker_url,
        triggered.backend_url,
        "--allow-writes",
        queue_env=triggered.queue_env,
    )
    iii = triggered.client.iii
    scope = f"console-trg-{uuid.uuid4().hex[:8]}"
    registered: list[str] = []
    try:
        # Given a trigger a service registered, with a scope, a key and a condition
        existing = iii.register_trigger(
            {
                "type": "state",
                "function_id": "test::onScope",
                "config": {
                    "scope": scope,
                    "key": "watched",
                    "condition_function_id": "conditions::truthy",
                },
            }
        )
        registered.append(existing.id)

        # When the user opens the triggers view, it is listed with all of its filters
        browser.get(f"{console.url}/#/triggers")
        assert trigger_row(browser, existing.id) == [
            "test::onScope",
            scope,
            "watched",
            "conditions::truthy",
            existing.id,
        ]

        # A registration without a function is refused with its code and message, and the
        # form keeps what was typed
        form = wait_for(browser, "#register-trigger")
        field = {
            name: form.find_element("css selector", f'input[name="{name}"]')
            for name in ("function_id", "scope", "key", "condition_function_id")
        }
        field["scope"].send_keys(f"{scope}-bad")
        form.find_element("css selector", 'button[type="submit"]').click()
        error = wait_for(browser, "#error", text="VALIDATION_ERROR")
        assert "function_id" in error.text
        assert field["scope"].get_attribute("value") == f"{scope}-bad"
        assert not [t for t in iii.list_triggers() if t["config"].get("scope") == f"{scope}-bad"]

        # Registering a handler for one key of the scope: it is listed, and runs on a change
        field["scope"].clear()
        field["scope"].send_keys(scope)
        field["function_id"].send_keys("test::onAny")
        field["key"].send_keys("k1")
        form.find_element("css selector", 'button[type="submit"]').click()
        row = wait_for(browser, '#triggers tr[data-function="test::onAny"]', text=scope)
        new_id = row.get_attribute("data-id")
        registered.append(new_id)
        assert trigger_row(browser, new_id)[:4] == ["test::onAny", scope, "k1", "—"]
        assert not browser.find_element("css selector", "#error").is_displayed()
        assert field["function_id"].get_attribute("value") == ""  # the form is ready again
        listed = {t["id"]: t for t in iii.list_triggers()}
        assert listed[new_id]["function_id"] == "test::onAny"
        assert listed[new_id]["config"] == {"scope": scope, "key": "k1"}
        triggered.call("state::set", scope=scope, key="k1", value={"n": 1})
        records = redis.Redis.from_url(record_url)

        def handled() -> bool:
            events = [json.loads(raw) for raw in records.lrange("record:any", 0, -1)]
            return any(e["scope"] == scope and e["key"] == "k1" for e in events)

        wait_until(handled, 20, "test::onAny to handle the change of k1")

        # Unregistering asks first: cancelled, the trigger stays
        unregister = f'#triggers tr[data-id="{new_id}"] button.unregister'
        wait_for(browser, unregister).click()
        assert "test::onAny" in wait_for(browser, "#dialog[open]", text="Unregister").text
        wait_for(browser, "#cancel-unregister").click()
        gone_from_page(browser, "#dialog[open]")
        assert new_id in {t["id"] for t in iii.list_triggers()}
        trigger_row(browser, new_id)

        # Confirmed, it is gone from the page and from the deployment; the other one stays
        wait_for(browser, unregister).click()
        wait_for(browser, "#confirm-unregister").click()
        gone_from_page(browser, f'#triggers tr[data-id="{new_id}"]')
        remaining = {t["id"] for t in iii.list_triggers()}
        assert new_id not in remaining and existing.id in remaining
        assert trigger_row(browser, existing.id)[0] == "test::onScope"
        assert not browser.find_element("css selector", "#error").is_displayed()
    finally:
        console.stop()
        for trigger_id in registered:
            iii.unregister_trigger(trigger_id)


def test_with_writes_off_triggers_are_shown_but_not_changed(
    triggered: Any, browser: Any, tmp_path: Path
) -> None:
    console = Console(
        tmp_path, triggered.broker_url, triggered.backend_url, queue_env=triggered.queue_env
    )
    iii = triggered.client.iii
    scope = f"console-trg-ro-{uuid.uuid4().hex[:8]}"
    existing = iii.register_trigger(
        {"type": "state", "function_id": "test::onScope", "config": {"scope": scope}}
    )
    try:
        # The read-only page lists the trigger, and offers no way to change it
        browser.get(f"{console.url}/#/triggers")
        assert trigger_row(browser, existing.id)[:4] == ["test::onScope", scope, "any", "—"]
        assert wait_for(browser, "#writes").text == "read-only"
        row = f'#triggers tr[data-id="{existing.id}"]'
        assert not wait_for(browser, f"{row} button.unregister").is_enabled()
        assert not wait_for(browser, '#register-trigger button[type="submit"]').is_enabled()

        # Sent from the page all the same, both are refused with their code
        answers = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "const post = (path, body) => fetch(path, {method: 'POST',"
            " headers: {'content-type': 'application/json'}, body: JSON.stringify(body)})"
            ".then(r => r.json().then(j => [r.status, j.error.code]));"
            "Promise.all([post('/api/triggers/register', {function_id: 'test::onAny',"
            " scope: arguments[0]}), post('/api/triggers/unregister', {id: arguments[1]})])"
            ".then(done);",
            scope,
            existing.id,
        )
        assert answers == [[403, "WRITES_DISABLED"], [403, "WRITES_DISABLED"]]
        mine = [t for t in iii.list_triggers() if t["config"].get("scope") == scope]
        assert [t["id"] for t in mine] == [existing.id]
    finally:
        console.stop()
        iii.unregister_trigger(existing.id)


def test_the_feed_shows_a_big_value_each_batch_item_and_a_handlers_change_exactly(
    triggered: Any, browser: Any, tmp_path: Path
) -> None:
    console = Console(
        tmp_path, triggered.broker_url, triggered.backend_url, queue_env=triggered.queue_env
    )
    try:
        browser.get(console.url)
        wait_for(browser, "#live-dot.live")
        scope = f"console-log-{uuid.uuid4().hex[:8]}"

        # A 23 KB value set while the page is open: its row shows the start of the value and
        # its whole size, never null in its place
        words = "lorem ipsum dolor sit amet, consectetur adipiscing elit. "
        value = {"title": "big", "text": (words * 400)[:23_000]}
        text = json.dumps(value, ensure_ascii=False)
        triggered.call("state::set", scope=scope, key="big", value=value)
        row = feed_row(browser, scope, "big", "state:created", "created")
        assert f"{text[:120]}…, {len(text.encode()):,} bytes" in row
        assert "null" not in row

        # ...and opened, the whole value is read back from the log: exactly what was set
        css = f'#feed-rows li[data-scope="{scope}"][data-key="big"]'
        wait_for(browser, f"{css} details summary").click()
        wait_for(browser, f'{css} .value[data-which="new"] button.load-value').click()
        wait_for(browser, f"{css} .whole button.raw-toggle").click()
        raw = wait_for(browser, f"{css} .whole pre.raw")
        assert json.loads(raw.get_attribute("textContent")) == value

        # Each operation of a batch is a row of its own, with its key and values
        triggered.call(
            "state::batch",
            scope=scope,
            operations=[
                {"op": "set", "key": "b1", "value": 1},
                {"op": "set", "key": "b2", "value": {"x": [1, 2]}},
                {"op": "delete", "key": "big"},
            ],
        )
        feed_row(browser, scope, "b1", "state:created", "created")
        assert '{"x": [1, 2]}' in feed_row(browser, scope, "b2", "state:created", "created")
        deleted = feed_row(browser, scope, "big", "state:deleted", "deleted")
        assert text[:120] in deleted  # the value it held

        # A change a trigger handler makes inside the worker (test::readBack writes
        # readback-results/<key> in-process) shows too
        key = f"k-{uuid.uuid4().hex[:8]}"
        triggered.call("state::set", scope="readback", key=key, value={"n": 1})
        made = feed_row(browser, "readback-results", key, "state:created", "created")
        assert '{"seen": {"n": 1}}' in made
    finally:
        console.stop()


def small_log_yaml(change_log: str) -> str:
    """A worker's state.yaml: the in-memory KvStore with this ``change_log``."""
    kv_store = adapter_yaml("modules::state::adapters::KvStore", store_method="in_memory")
    return kv_store + f"      change_log: {change_log}\n"


def test_a_trimmed_log_and_a_log_that_is_off_are_said_on_the_page(
    redis_server: Any, browser: Any, tmp_path: Path
) -> None:
    trimmed = Deployment(redis_server, tmp_path / "trimmed", small_log_yaml("{max_entries: 10}"))
    off = Deployment(redis_server, tmp_path / "off", small_log_yaml("false"))
    off.worker(start=False).start(wait=False)  # ready by the time its page is opened
    trimmed.worker()
    consoles: list[Console] = []
    try:
        # A page has seen a change; the console stops, and more changes are made than the
        # log keeps
        first = Console(
            tmp_path, trimmed.broker_url, trimmed.backend_url, queue_env=trimmed.queue_env
        )
        consoles.append(first)
        browser.get(first.url)
        wait_for(browser, "#live-dot.live")
        scope = f"console-trim-{uuid.uuid4().hex[:8]}"
        trimmed.call("state::set", scope=scope, key="k", value=0)
        feed_row(browser, scope, "k", "state:created", "created")
        first.stop()
        for i in range(1, 41):
            trimmed.call("state::set", scope=scope, key="k", value=i)

        # Back, the console says that changes were trimmed, and goes on from the oldest kept
        again = Console(
            tmp_path,
            trimmed.broker_url,
            trimmed.backend_url,
            port=first.port,
            queue_env=trimmed.queue_env,
        )
        consoles.append(again)
        notice = wait_for(browser, '#feed-rows li.feed-notice[data-notice="compacted"]', 15)
        assert "were trimmed from the log; continuing from the oldest kept" in notice.text
        feed_row(browser, scope, "k", "state:updated", "40")

        # With the log off, the page says so in place of changes
        consoles.append(Console(tmp_path, off.broker_url, off.backend_url, queue_env=off.queue_env))
        browser.get(consoles[-1].url)
        note = wait_for(browser, '#feed-note[data-state="off"]', 15)
        assert "The change log is off on this deployment" in note.text
        assert "change_log: false" in note.text
        assert wait_for(browser, "#live-dot.off")
    finally:
        for console in consoles:
            console.stop()
        trimmed.close()
        off.close()
