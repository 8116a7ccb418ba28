"""The console as a tool that edits production data, in headless Chromium against real
workers: an edit that meets a change made meanwhile shows both and overwrites only when
told, a key's expiry survives a save, a flood of bytes without the token is refused unread,
the sign-in says what went wrong and signs out, the page stays readable with any key or
value, triggers say when no worker can run them and how they ran, the live dot tells "no
worker" from "no broker", and "Copy JSON" works off the loopback.

With ``STATE_TASKS_CONSOLE_SCREENSHOTS=<folder>`` the tests save a screenshot of each view
(1400×900) there: ``docs/images/`` holds the ones the docs show.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import test_console
from helpers import own_db
from test_console import Console, set_editor, wait_for

from state_tasks.contrib.servers import make_tls_files, wait_until

# The fixtures of test_console.py, used here too (each module gets its own instances).
browser = test_console.browser
triggered = test_console.triggered
record_url = test_console.record_url

#: How much the console's memory may grow while it refuses a 50 MiB body without the token.
FLOOD_RSS_BOUND_KIB = 20 * 1024
FLOOD_BYTES = 50 * 1024 * 1024


def screenshot(browser: Any, name: str) -> None:
    """Save the page as ``<name>.png`` (1400×900) in $STATE_TASKS_CONSOLE_SCREENSHOTS, if set."""
    folder = os.environ.get("STATE_TASKS_CONSOLE_SCREENSHOTS")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    size = {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", size)
    try:
        time.sleep(1.3)  # the newest feed row's highlight fades
        browser.save_screenshot(str(Path(folder) / f"{name}.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def start_console(deployment: Any, workdir: Path, *args: str) -> Console:
    return Console(
        workdir,
        deployment.broker_url,
        deployment.backend_url,
        *args,
        queue_env=deployment.queue_env,
    )


def sign_in_link(console: Console) -> tuple[str, str]:
    """The one-time sign-in path and the token a console printed at start-up."""
    wait_until(lambda: "/login?code=" in console.log(), 10, "the start-up lines")
    lines = console.log().splitlines()
    link = next(line for line in lines if "/login?code=" in line).split()[-1]
    token = next(line for line in lines if "token (Authorization" in line).split()[-1]
    return link[link.index("/login") :], token


def versioned(deployment: Any, scope: str, key: str) -> Any:
    return deployment.call("state::get", scope=scope, key=key, with_version=True)


# -- 1. safe edits --------------------------------------------------------------------------


def test_an_edit_that_meets_a_change_made_meanwhile_shows_both_and_keeps_the_expiry(
    kv_deployment: Any, browser: Any, tmp_path: Path
) -> None:
    console = start_console(kv_deployment, tmp_path, "--allow-writes")
    scope = f"console-cas-{uuid.uuid4().hex[:8]}"
    try:
        # Given a key that expires in ten minutes, open in the editor
        kv_deployment.call(
            "state::set", scope=scope, key="profile", value={"n": 1, "tags": ["a"]}, ttl_ms=600_000
        )
        browser.get(f"{console.url}/#/scope/{scope}/key/profile")
        assert "in 10 min" in wait_for(browser, "#value-expiry", text="expiry in").text
        wait_for(browser, "#edit-value").click()
        keep = wait_for(browser, "#ttl", text="keep").text
        assert "keep: expires in 10 min" in keep and "never: remove the expiry" in keep
        screenshot(browser, "console-edit")

        # When another client changes it meanwhile, and the user saves
        kv_deployment.call(
            "state::update", scope=scope, key="profile", ops=[{"increment": {"field": "n"}}]
        )
        set_editor(browser, '{"n": 5, "tags": ["a", "mine"]}')
        wait_for(browser, "#save").click()

        # Then nothing is written, and theirs and yours are shown side by side
        why = wait_for(browser, "#conflict-why", text="someone changed it").text
        assert "Nothing was written" in why
        theirs = wait_for(browser, "#theirs pre").text
        yours = wait_for(browser, "#yours pre").text
        assert '"n": 2' in theirs and '"n": 5' in yours and '"mine"' in yours
        differs = browser.find_elements("css selector", "#yours .line.differs")
        assert {line.text.strip() for line in differs} >= {'"n": 5,', '"mine"'}
        assert versioned(kv_deployment, scope, "profile")["value"] == {"n": 2, "tags": ["a"]}
        screenshot(browser, "console-conflict")

        # Overwritten knowingly: saved, and the key still expires (keep was chosen)
        wait_for(browser, "#conflict-overwrite").click()
        wait_until(
            lambda: versioned(kv_deployment, scope, "profile")["value"]["n"] == 5, 10, "the save"
        )
        now = versioned(kv_deployment, scope, "profile")
        assert now["value"] == {"n": 5, "tags": ["a", "mine"]}
        assert now["expires_in_ms"] is not None and 0 < now["expires_in_ms"] <= 600_000

        # A new expiry, then none: as chosen in the TTL field
        wait_for(browser, "#value-version", text=f"version {now['version']}")
        wait_for(browser, "#edit-value").click()
        wait_for(browser, "#ttl-amount").send_keys("30")
        wait_for(browser, "#save").click()
        wait_until(
            lambda: (
                (versioned(kv_deployment, scope, "profile")["expires_in_ms"] or 10**9) <= 30_000
            ),
            10,
            "the new expiry",
        )
        version = versioned(kv_deployment, scope, "profile")["version"]
        wait_for(browser, "#value-version", text=f"version {version}")
        wait_for(browser, "#edit-value").click()
        wait_for(browser, '#ttl input[value="remove"]').click()
        wait_for(browser, "#save").click()
        wait_until(
            lambda: versioned(kv_deployment, scope, "profile")["version"] > version, 10, "the save"
        )
        assert versioned(kv_deployment, scope, "profile")["expires_in_ms"] is None

        # A delete confirmed after another change deletes nothing and shows theirs
        version = versioned(kv_deployment, scope, "profile")["version"]
        wait_for(browser, "#value-version", text=f"version {version}")
        wait_for(browser, "#delete-value").click()
        assert (
            f"version {version}" in wait_for(browser, "#dialog[open]", text="Delete this key").text
        )
        kv_deployment.call("state::set", scope=scope, key="profile", value={"n": 6})
        wait_for(browser, "#confirm-delete").click()
        assert '"n": 6' in wait_for(browser, "#theirs pre", text='"n": 6').text
        assert wait_for(browser, "#conflict-overwrite").text == "Delete anyway"
        assert versioned(kv_deployment, scope, "profile")["value"] == {"n": 6}
        wait_for(browser, "#conflict-reload").click()
        wait_for(browser, "#value-tree", text='"n": 6')
    finally:
        console.stop()


# -- 2. sign-in ------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


def flood(port: int, path: str, headers: str, length: int, pid: int) -> tuple[str, int, int]:
    """POST ``length`` bytes to ``path`` from a thread while reading the answer: (its status
    line, the bytes the console let us send, the console's largest RSS meanwhile, KiB)."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}"
    connection.sendall(f"{head}Content-Length: {length}\r\n\r\n".encode())
    sent = [0]
    peak = [rss_kib(pid)]
    done = threading.Event()

    def send_body() -> None:
        chunk = b"t" * 65536
        try:
            while sent[0] < length:
                sent[0] += connection.send(chunk[: length - sent[0]])
        except OSError:  # the console closed the connection: the rest is not taken
            pass

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.01)

    threads = [threading.Thread(target=send_body), threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    answer = b""
    try:
        while b"\r\n" not in answer:
            got = connection.recv(4096)
            if not got:
                break
            answer += got
        threads[0].join(30)
    finally:
        done.set()
        threads[1].join(5)
        connection.close()
    return answer.split(b"\r\n", 1)[0].decode(), sent[0], peak[0]


def test_a_flood_without_the_token_is_refused_unread_and_the_sign_in_says_what_went_wrong(
    kv_deployment: Any, browser: Any, tmp_path: Path
) -> None:
    console = start_console(kv_deployment, tmp_path, "--host", "0.0.0.0")
    try:
        path, token = sign_in_link(console)
        pid = console.process.pid
        console.request("/login")  # warm: what a first request loads is no flood's doing
        before = rss_kib(pid)

        # A 50 MiB body to the sign-in without the token: 413 at once, memory flat
        form = "Content-Type: application/x-www-form-urlencoded\r\n"
        status, sent, peak = flood(console.port, "/login", form, FLOOD_BYTES, pid)
        assert status == "HTTP/1.1 413 Request Entity Too Large" or status.startswith(
            "HTTP/1.1 413"
        )
        assert sent < FLOOD_BYTES  # the connection was closed on the rest
        assert peak - before < FLOOD_RSS_BOUND_KIB, (before, peak)
        # ...to the API too, and a body of unknown size (chunked) is refused as well
        status, _, peak = flood(console.port, "/api/set", "", FLOOD_BYTES, pid)
        assert status.startswith("HTTP/1.1 413") and peak - before < FLOOD_RSS_BOUND_KIB
        chunked = socket.create_connection(("127.0.0.1", console.port), timeout=10)
        chunked.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert chunked.recv(100).startswith(b"HTTP/1.1 411")
        chunked.close()
        # With the token, the cap is the largest value's (twice, plus a margin)
        bearer = f"Authorization: Bearer {token}\r\n"
        status, _, _ = flood(console.port, "/api/set", bearer, FLOOD_BYTES, pid)
        assert status.startswith("HTTP/1.1 413")
        assert console.process.poll() is None

        # In the browser: a wrong token says so; the right one signs in; sign-out ends it
        browser.delete_all_cookies()
        browser.get(f"{console.url}/login")
        wait_for(browser, 'input[name="token"]').send_keys("not-the-token\n")
        assert "Wrong token" in wait_for(browser, "#login-message", text="wrong").text
        screenshot(browser, "console-sign-in")
        wait_for(browser, 'input[name="token"]').send_keys(f"{token}\n")
        wait_for(browser, "body[data-ready]")
        cookie = browser.get_cookie("state_tasks_console")
        assert cookie is not None and cookie["value"] != token and cookie["httpOnly"]
        assert wait_for(browser, "#no-tls").text == "not encrypted"  # plain HTTP, signed in
        wait_for(browser, "#sign-out button").click()
        assert "You are signed out" in wait_for(browser, "#login-message", text="signed out").text
        old = f"state_tasks_console={cookie['value']}"
        assert console.request("/api/info", headers={"cookie": old})[0] == 401
        # the one-time link works once; a second use says it was used
        browser.get(f"{console.url}{path}")
        wait_for(browser, "body[data-ready]")
        browser.get(f"{console.url}{path}")
        assert "used already" in wait_for(browser, "#login-message", text="used").text
    finally:
        console.stop()


def test_over_https_the_session_cookie_is_secure(kv_deployment: Any, tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "certs")

    class HttpsConsole(Console):
        def _up(self) -> bool:
            assert self.process.poll() is None, self.log()
            try:
                context = ssl.create_default_context(cafile=str(tls.ca_cert))
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{self.port}/login", timeout=2, context=context
                ):
                    return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False

    console = HttpsConsole(
        tmp_path,
        kv_deployment.broker_url,
        kv_deployment.backend_url,
        "--host",
        "0.0.0.0",
        "--certfile",
        str(tls.server_cert),
        "--keyfile",
        str(tls.server_key),
        queue_env=kv_deployment.queue_env,
    )
    try:
        path, _ = sign_in_link(console)
        assert f"https://0.0.0.0:{console.port}/login?code=" in console.log()
        context = ssl.create_default_context(cafile=str(tls.ca_cert))

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(
            NoRedirect, urllib.request.HTTPSHandler(context=context)
        )
        with pytest.raises(urllib.error.HTTPError) as signed_in:
            opener.open(f"https://127.0.0.1:{console.port}{path}", timeout=10)
        assert signed_in.value.code == 303
        cookie = signed_in.value.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie
        # plain HTTP is not served on that port
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{console.port}/login", timeout=5).read()
    finally:
        console.stop()


# -- 3. a page that stays readable ------------------------------------------------------------

BIG_INTEGER = int("7" * 400)  # 400 digits, no space: one line that no table may widen for


def inside(browser: Any, css: str) -> bool:
    """Whether every element matching ``css`` is whole in view, and a click on its centre
    lands on it (not on the feed panel or anything else over it)."""
    script = """
    const main = document.querySelector("main").getBoundingClientRect();
    return [...document.querySelectorAll(arguments[0])].every((e) => {
      const r = e.getBoundingClientRect();
      const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      return r.width > 0 && r.left >= main.left && r.right <= main.right && e.contains(hit);
    });"""
    return bool(browser.execute_script(script, css))


def rendered_lines(browser: Any, css: str) -> list[str]:
    """The text of an element as the browser laid it out, one string per line."""
    script = """
    const lines = [];
    let top = null;
    const walker = document.createTreeWalker(document.querySelector(arguments[0]), NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (let i = 0; i < node.length; i += 1) {
        const range = document.createRange();
        range.setStart(node, i);
        range.setEnd(node, i + 1);
        const rect = range.getClientRects()[0];
        if (!rect) continue;
        if (top === null || rect.top > top + 2) { lines.push(""); top = rect.top; }
        lines[lines.length - 1] += node.data[i];
      }
    }
    return lines;"""
    return list(browser.execute_script(script, css))


def test_every_view_stays_readable_with_long_values_hidden_characters_and_old_changes(
    kv_deployment: Any, browser: Any, tmp_path: Path
) -> None:
    scope = f"console-wide-{uuid.uuid4().hex[:8]}"
    long_key = "k" * 96  # a 96-byte key holding a big integer, as the issue met it
    spoof = "rtl\u202eevil.exe"
    nested = {f"field_{i}": {"id": i, "tags": ["x"] * 3} for i in range(12)}
    path_key = "tenants/acme-corporation/users/0f9d1c2e-7a3b-4c5d-9e8f-a1b2c3d4e5f6/profile"
    values = {
        long_key: BIG_INTEGER,
        spoof: "payload\u2066hidden\u2069",
        "config": nested,
        path_key: "x" * 6000,  # over the 4 KiB preview, no space
        "<b>html</b>": "<script>alert(1)</script>",
    }
    kv_deployment.call(
        "state::batch",
        scope=scope,
        operations=[{"op": "set", "key": k, "value": v} for k, v in values.items()],
    )
    kv_deployment.call("state::set", scope=scope, key="config", value=nested)  # a change before
    console = start_console(kv_deployment, tmp_path, "--allow-writes")
    try:
        # The scopes list: a scope name with a bidi override shows it as its escape
        bidi_scope = f"{scope}-\u202ecod"
        kv_deployment.call("state::set", scope=bidi_scope, key="k", value=1)
        browser.get(console.url)
        wait_for(browser, "#live-dot.live")
        wait_for(browser, "#filter").send_keys(scope)
        # (found and read in one look: the list is drawn again as the filter and the live
        # feed change it, which makes an element found before stale)
        wait_for(browser, "#scopes a.scope-link .esc", text="\\u202e")
        screenshot(browser, "console-scopes")

        # A scope's keys: the actions of every row in view and clickable, long values cut
        browser.get(f"{console.url}/#/scope/{scope}")
        wait_for(browser, "#keys tbody tr")
        wait_until(
            lambda: len(browser.find_elements("css selector", "#keys tbody tr")) == 5, 10, "5 rows"
        )
        assert inside(browser, "#keys td.actions button.edit")
        assert inside(browser, "#keys td.actions button.delete")
        table = browser.find_element("css selector", "#keys")
        main = browser.find_element("css selector", "main")
        assert table.rect["width"] <= main.rect["width"]
        cut = browser.execute_script(
            "const leaf = document.querySelector(arguments[0] + ' td.value .leaf');"
            "return [leaf.scrollWidth > leaf.clientWidth, getComputedStyle(leaf).textOverflow];",
            f'#keys tr[data-key="{long_key}"]',
        )
        assert cut == [True, "ellipsis"]
        # the bidi key reads as what it is, its override shown as an escape
        row = wait_for(browser, "#keys a.key-link", text="rtl")
        assert row.text == "rtl\\u202eevil.exe"
        assert "\\u2066" in wait_for(browser, "#keys tr td.value", text="payload").text
        # a tree's summary is one line, a long key breaks at its separators
        summary = browser.find_element("css selector", '#keys tr[data-key="config"] summary')
        assert summary.rect["height"] < 24 and "12 keys" in summary.text
        lines = rendered_lines(browser, f'#keys tr[data-key="{path_key}"] a.key-link')
        assert "".join(lines) == path_key and len(lines) >= 2
        assert all(line[-1] in "/-" for line in lines[:-1]), lines  # at its separators
        assert "\u202e" not in browser.find_element("css selector", "#view").text
        # the changes made before the page are not marked, even when the feed sends them
        # again (filtered: it reconnects and gets the changes the console holds); one made
        # now is
        browser.execute_script(
            "for (const li of document.querySelectorAll('#feed-rows li')) li.dataset.old = 1"
        )
        wait_for(browser, "#feed-filter").send_keys(scope)
        wait_for(
            browser, f'#feed-rows li[data-scope="{scope}"][data-key="config"]:not([data-old])', 5
        )
        assert not browser.find_elements("css selector", "#keys tr.changed")
        kv_deployment.call("state::set", scope=scope, key="config", value={"now": True})
        wait_for(browser, '#keys tr.changed[data-key="config"]', 5)
        assert len(browser.find_elements("css selector", "#keys tr.changed")) == 1
        screenshot(browser, "console-keys")

        # One key: the big integer whole, and its page's actions in view
        browser.get(f"{console.url}/#/scope/{scope}/key/{long_key}")
        assert wait_for(browser, "#value-tree", text="7777").text.strip() == str(BIG_INTEGER)
        assert inside(browser, "#view .toolbar button")
        overflow = browser.execute_script(
            "const t = document.querySelector('#value-tree'), d = document.documentElement;"
            "return [t.scrollWidth - t.clientWidth, d.scrollWidth - d.clientWidth];"
        )
        assert overflow == [0, 0]  # the digits wrap within the panel; nothing scrolls sideways
        screenshot(browser, "console-value")
    finally:
        console.stop()


# -- 4. triggers that say when they cannot run --------------------------------------------


def trigger_cells(browser: Any, trigger_id: str) -> dict[str, str]:
    row = wait_for(browser, f'#triggers tr[data-id="{trigger_id}"]')
    names = ["function", "scope", "key", "condition", "when", "runs", "last_error", "id"]
    cells = row.find_elements("css selector", "td")
    return {name: cell.text for name, cell in zip(names, cells, strict=False)}


def test_triggers_say_when_no_worker_can_run_them_and_how_they_ran(
    triggered: Any, browser: Any, tmp_path: Path
) -> None:
    console = start_console(triggered, tmp_path, "--allow-writes")
    iii = triggered.client.iii
    scope = f"console-runs-{uuid.uuid4().hex[:8]}"
    try:
        browser.get(f"{console.url}/#/triggers")
        form = wait_for(browser, "#register-trigger")
        field = {
            name: form.find_element("css selector", f'input[name="{name}"]')
            for name in ("function_id", "scope", "key", "condition_function_id")
        }

        # A trigger for a function no worker has: registered, with a warning that says so
        field["function_id"].send_keys("test::nope")
        field["scope"].send_keys(f"{scope}-nope")
        form.find_element("css selector", 'button[type="submit"]').click()
        warning = wait_for(browser, '#trigger-warnings [data-code="UNKNOWN_FUNCTION"]').text
        assert "no running worker has the function 'test::nope'" in warning
        assert re.search(
            r"asked every worker on (redis|amqp)://\S+( \(results: \S+\))?; "
            r"1 answered within 1 s: \S+@",
            warning,
        )
        row = wait_for(browser, '#triggers tr[data-function="test::nope"]')
        assert "no worker has it" in row.text

        # ...and in the JSON answer
        answer = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/triggers/register', {method: 'POST', headers: {'content-type':"
            " 'application/json'}, body: JSON.stringify({function_id: 'test::onAny',"
            " scope: arguments[0], condition_function_id: 'conditions::nowhere'})})"
            ".then(r => r.json()).then(done);",
            f"{scope}-nocond",
        )
        assert [w["code"] for w in answer["warnings"]] == ["UNKNOWN_CONDITION"]

        # A trigger whose condition fails, and one that runs: the view counts both
        field["function_id"].send_keys("test::onAny")
        field["scope"].send_keys(f"{scope}-broken")
        field["condition_function_id"].send_keys("conditions::broken")
        form.find_element("css selector", 'button[type="submit"]').click()
        wait_for(browser, "#triggers", text=f"{scope}-broken")
        field["function_id"].send_keys("test::onScope")
        field["scope"].send_keys(f"{scope}-ok")
        form.find_element("css selector", 'input[name="when"]').send_keys('{"path": "n", "gte": 1}')
        form.find_element("css selector", 'button[type="submit"]').click()
        wait_for(browser, "#triggers", text=f"{scope}-ok")
        assert not browser.find_element("css selector", "#trigger-warnings").is_displayed()
        ids = {t["config"].get("scope"): t["id"] for t in iii.list_triggers()}
        # its filter is shown as registered, and judged: {"n": 0} sends nothing
        assert trigger_cells(browser, ids[f"{scope}-ok"])["when"] == '{"path":"n","gte":1}'
        assert trigger_cells(browser, ids[f"{scope}-broken"])["when"] == "always"
        for i in range(2):
            triggered.call("state::set", scope=f"{scope}-broken", key="k", value=i)
        triggered.call("state::set", scope=f"{scope}-ok", key="k", value={"n": 0})
        triggered.call("state::set", scope=f"{scope}-ok", key="k", value={"n": 1})
        ok_runs = f'#triggers tr[data-id="{ids[scope + "-ok"]}"] td.runs'
        wait_for(browser, ok_runs, 15, "1 run")
        broken = f'#triggers tr[data-id="{ids[scope + "-broken"]}"]'
        wait_for(browser, f"{broken} td.runs", 15, "condition: 2 runs · 2 failed")
        # (the runs are refreshed every 3 s: by now the refused {"n": 0} would show too)
        assert browser.find_element("css selector", ok_runs).text.startswith("1 run ")
        cells = trigger_cells(browser, ids[f"{scope}-broken"])
        assert "RuntimeError('this condition always fails')" in browser.find_element(
            "css selector", f"{broken} td.last-error span"
        ).get_attribute("title")
        assert cells["condition"].startswith("conditions::broken")
        assert (
            "Runs and failures from the workers' task events"
            in wait_for(browser, '#events-status[data-state="on"]').text
        )
        screenshot(browser, "console-triggers")
    finally:
        console.stop()
        for trigger in iii.list_triggers():
            if str(trigger["config"].get("scope", "")).startswith(scope):
                iii.unregister_trigger(trigger["id"])


# -- 5. the dot, a value sent once, Copy JSON ------------------------------------------------


def test_the_dot_tells_no_worker_from_no_broker(
    redis_server: Any, browser: Any, tmp_path: Path
) -> None:
    idle = redis_server.url(own_db())  # a broker no worker listens to
    no_worker = Console(tmp_path, idle, idle, "--call-timeout", "1")
    no_broker = Console(tmp_path, "redis://127.0.0.1:1/0", idle, "--call-timeout", "1")
    try:
        browser.get(no_worker.url)
        dot = wait_for(browser, '#live-dot[data-state="no_worker"]', 15)
        assert "no-worker" in dot.get_attribute("class")
        assert dot.value_of_css_property("background-color") == "rgba(156, 163, 175, 1)"  # grey
        assert "No worker answers" in wait_for(browser, "#feed-note").text
        browser.get(no_broker.url)
        dot = wait_for(browser, '#live-dot[data-state="unreachable"]', 15)
        assert dot.value_of_css_property("background-color") == "rgba(220, 38, 38, 1)"  # red
        assert "The broker cannot be reached" in wait_for(browser, "#feed-note").text
    finally:
        no_worker.stop()
        no_broker.stop()


def outward_address() -> str | None:
    """This machine's address on its network (not the loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_a_value_is_sent_once_and_copy_json_works_off_the_loopback(
    kv_deployment: Any, browser: Any, tmp_path: Path
) -> None:
    address = outward_address()
    if address is None:
        pytest.skip("this machine has no address besides the loopback")
    scope = f"console-copy-{uuid.uuid4().hex[:8]}"
    value = {"id": "x" * 50_000, "n": BIG_INTEGER}
    kv_deployment.call("state::set", scope=scope, key="k", value=value)
    console = start_console(kv_deployment, tmp_path, "--host", "0.0.0.0")
    try:
        path, token = sign_in_link(console)
        status, answer, _ = console.request(
            f"/api/value?scope={scope}&key=k", headers={"authorization": f"Bearer {token}"}
        )
        sent = len(json.dumps(answer))
        assert status == 200 and sent < answer["size"] + 1000  # the value once
        assert json.loads(answer["json"]) == value

        # Off the loopback the browser withholds the clipboard API: the copy still works
        url = f"http://{address}:{console.port}"
        browser.get(f"{url}{path}")
        wait_for(browser, "body[data-ready]")
        browser.get(f"{url}/#/scope/{scope}/key/k")
        wait_for(browser, "#value-tree", text="xxxx")
        assert browser.execute_script("return window.isSecureContext") is False
        browser.execute_script(
            "document.addEventListener('copy', (e) => { const t = e.target;"
            " window.copied = t.value.slice(t.selectionStart, t.selectionEnd); });"
        )
        wait_for(browser, "#copy-json").click()
        assert wait_for(browser, "#copy-status", text="copied").text == "copied"
        assert json.loads(browser.execute_script("return window.copied")) == value
    finally:
        console.stop()
