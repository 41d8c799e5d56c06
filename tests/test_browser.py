"""The browser client (gateway/web/) in Debian's real Chromium, driven by Selenium.

Two browser sessions chat through a running imflow (2 gateways and a Faust worker on the real
Kafka and Redis): unread badges rise and clear, history survives a reload and scrolls back,
groups and red packets work, a phone-sized screen alternates list and pane, a friend request
with a note is accepted (contacts, profiles and presence on both sides), a block refuses the
blocked user's message with a visible code while the blocker never sees it, and a gateway
killed with SIGKILL and started again is survived without losing a message; an image (with its
thumbnail) and a file go across, one's own messages are edited and recalled on both sides, and a
one-to-one read receipt shows once the peer reads.

Needs `scripts/browser` (apt-get install chromium chromium-driver) and the selenium package.
Under CI (CI=true) or with IMFLOW_REQUIRE_SERVICES=1 a missing browser fails the tests.
Screenshots of the main views go to artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from pydantic import SecretStr
from stacks import SECRET, STACK_ENV, Stack
from starlette.applications import Starlette

from imflow.client import Client
from imflow.core import accounts, tokens
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage import redis_client
from imflow.core.storage.redis_client import connect
from imflow.gateway import dev_login
from imflow.testing import start_listening, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        ElementNotInteractableException,
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:  # reported by the `chromium` fixture, which fails or skips
    webdriver = None
else:
    # the page re-renders as frames arrive: an element may be replaced, not there yet, or covered
    TRANSIENT = (StaleElementReferenceException, NoSuchElementException, ElementNotInteractableException,
                 ElementClickInterceptedException)

REQUIRE = os.environ.get("CI") == "true" or os.environ.get("IMFLOW_REQUIRE_SERVICES") == "1"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
ADMIN_SECRET = "browser-tests-admin-secret-0123456789abcdef"  # the app backend's, for profiles
DESKTOP = (1280, 800)
PHONE = (390, 844)
# keep Chromium off the network: the tests talk to 127.0.0.1 only
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--disable-extensions",
    "--disable-features=Translate,OptimizationHints,MediaRouter", f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    """Paths of Debian's chromium and chromedriver; missing ones fail under CI, else skip."""
    missing = []
    if webdriver is None:
        missing.append("the selenium package (.venv/bin/pip install selenium, a test dependency)")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        missing.append("Debian's chromium and chromium-driver (run scripts/browser, which apt-get installs them)")
    if missing:
        message = "the browser tests need " + " and ".join(missing)
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)
    return browser, driver  # type: ignore[return-value]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, kafka_url: str, redis_url: str) -> Iterator[Stack]:
    """Two gateways with development sign-in and a Faust worker, on the real Kafka and Redis."""
    # the session's test database (IMFLOW_TEST_REDIS_URL): modules run one after the other, so
    # no other stack of this session uses it meanwhile, and a session beside this one (another
    # developer's, another checkout's) has a database of its own rather than one fixed here
    redis_client.flush_sync(redis_url)
    folder = tmp_path_factory.mktemp("browser-stack")
    env = {
        **STACK_ENV,
        "IMFLOW_KAFKA_URL": kafka_url,
        "IMFLOW_REDIS_URL": redis_url,
        "IMFLOW_APP_ID": f"t{uuid.uuid4().hex[:10]}",
        "IMFLOW_DATA_DIR": str(folder / "data"),
        "IMFLOW_DEV_LOGIN": "true",  # off by default on real servers
        "IMFLOW_ADMIN_SECRET": ADMIN_SECRET,
    }
    stack = Stack("real", folder, env)
    try:
        stack.start_worker()
        for _ in range(2):
            stack.start_gateway(["gateway"])
    except BaseException:
        stack.kill()
        raise
    yield stack
    stack.stop()


class Page:
    """One browser session of the chat client, read through the page's data attributes."""

    def __init__(self, driver: Any, name: str) -> None:
        self.driver = driver
        self.name = name

    # -- waiting and reading

    def wait(self, check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        """Poll ``check`` until it returns a truthy value and return it. The page renders in
        steps as frames arrive, so nothing on it is read once: every test waits for the state
        it expects (a generous deadline costs nothing when the page is quick)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = check()
            except TRANSIENT:
                value = None
            if value:
                return value
            time.sleep(0.05)
        self.screenshot(f"failed-{self.name}")
        raise AssertionError(f"{self.name}: {what} not within {timeout} s (last: {value!r}); logs: {self.logs()}")

    def wait_value(self, read: Callable[[], Any], accept: Callable[[Any], bool], what: str, timeout: float = 30.0) -> Any:
        """Poll ``read`` until ``accept`` takes its value, and return that value; a failure
        shows the last value read."""
        last: list[Any] = []

        def check() -> bool:
            last[:] = [read()]
            return accept(last[0])

        try:
            self.wait(check, what, timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}; last read: {last[0] if last else None!r}") from None
        return last[0]

    def wait_js(self, script: str, expected: Any, what: str, timeout: float = 30.0) -> Any:
        """Wait until a script's value equals ``expected`` (text content, a data attribute...)."""
        return self.wait_value(lambda: self.js(script), lambda value: value == expected, what, timeout)

    def wait_text_content(self, selector: str, contains: str, what: str, timeout: float = 30.0) -> str:
        """Wait until an element's text is non-empty and holds ``contains``; returns the text."""
        script = "return document.querySelector(arguments[0])?.textContent ?? null"
        return self.wait_value(lambda: self.js(script, selector), lambda text: bool(text) and contains in text, what, timeout)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def logs(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]

    def connection(self) -> str:
        return self.js("return document.body.dataset.connection")

    def messages(self) -> list[dict[str, Any]]:
        """The bubbles of the open conversation, top to bottom."""
        return self.js(
            """return [...document.querySelectorAll('#message-list li.message')].map((li) => ({
                 text: li.querySelector('.text')?.textContent ?? null, state: li.dataset.state,
                 mine: li.classList.contains('mine'), mid: li.dataset.mid || null, type: li.dataset.type,
                 sender: li.querySelector('.sender')?.textContent ?? null}))"""
        )

    def texts(self) -> list[str]:
        return [message["text"] for message in self.messages() if message["text"] is not None]

    def unread(self, conversation: str) -> int | None:
        """The badge of a conversation in the list; None while it is not listed."""
        value = self.js(
            "return document.querySelector(`li.conversation[data-conversation='${arguments[0]}']`)?.dataset.unread ?? null",
            conversation,
        )
        return None if value is None else int(value)

    def badge_shown(self, conversation: str) -> bool:
        return self.js(
            "const b = document.querySelector(`li.conversation[data-conversation='${arguments[0]}'] .badge`);"
            "return Boolean(b && !b.hidden && b.offsetParent !== null)",
            conversation,
        )

    def total(self) -> int:
        return int(self.js("return document.querySelector('#total-unread').dataset.count || '0'"))

    def total_shown(self) -> bool:
        return self.js("return !document.querySelector('#total-unread').hidden")

    def visible(self, selector: str) -> bool:
        return self.js("const e = document.querySelector(arguments[0]); return Boolean(e && e.offsetParent !== null)", selector)

    # -- doing

    def click(self, selector: str) -> None:
        """Click what the selector names; the lists re-render often, so a stale element is found again."""
        def attempt() -> bool:
            element = self.driver.find_element(By.CSS_SELECTOR, selector)
            if not element.is_displayed():
                return False
            element.click()
            return True

        self.wait(attempt, f"a visible {selector} to click")

    def click_until(self, selector: str, done: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
        """Click what the selector names until ``done()`` holds: a list that re-renders between the
        mouse's press and release (a receipt, a push) swallows that click, so it is made again
        (only for clicks that may be repeated, such as opening the editor)."""
        deadline = time.monotonic() + timeout
        while True:
            self.click(selector)
            try:
                self.wait(done, what, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                return
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise

    def type(self, selector: str, text: str) -> None:
        """Type into what the selector names, once it is shown (a dialog may still be opening)."""
        def attempt() -> bool:
            element = self.driver.find_element(By.CSS_SELECTOR, selector)
            if not element.is_displayed():
                return False
            element.clear()  # a retry after a re-render starts over
            element.send_keys(text)
            return True

        self.wait(attempt, f"a visible {selector} to type into")

    def sign_in(self, base: str, user: str) -> None:
        """Sign in by name on the page that the gateway at `base` serves, as a person would."""
        self.driver.get(f"{base}/")
        self.js("sessionStorage.clear(); localStorage.clear();")  # whoever was signed in before
        self.driver.get(f"{base}/")
        self.wait(lambda: self.visible("#signin-user"), "the sign-in form")
        self.type("#signin-user", user)
        self.click("#signin-button")
        self.wait(lambda: self.connection() == "online", "online after signing in")
        self.wait_js("return document.querySelector('#me-name').textContent", user, "my name in the header")

    def open(self, conversation: str) -> None:
        item = f"li.conversation[data-conversation='{conversation}']"
        self.click(f"{item} button")
        # this conversation, not just any: another one may have been open before
        self.wait(lambda: self.js(f"return document.querySelector(\"{item}\")?.getAttribute('aria-current') === 'true'"
                                  " && document.querySelector('#pane-header')?.hidden === false"), f"{conversation} open")

    def start_chat(self, user: str) -> None:
        self.click("#new-chat-button")
        self.type("#new-chat-user", user)
        self.click("#new-chat-start")
        self.wait(lambda: self.js("return document.querySelector('#pane-title')?.textContent") == user, f"the chat with {user}")

    def send(self, text: str) -> None:
        self.type("#composer-text", text)
        self.click("#send-button")

    def wait_text(self, text: str, state: str | None = None) -> dict[str, Any]:
        def shown() -> dict[str, Any] | None:
            found = [m for m in self.messages() if m["text"] == text and (state is None or m["state"] == state)]
            return found[0] if found else None

        return self.wait(shown, f"the message {text!r}" + (f" in state {state!r}" if state else ""))

    def record_states(self) -> None:
        """Note every state that our own bubbles pass through (they change faster than polling)."""
        self.js(
            """window.seenStates = new Set();
               const note = () => document.querySelectorAll('#message-list li.message.mine')
                 .forEach((li) => window.seenStates.add(li.dataset.state));
               new MutationObserver(note).observe(document.body, {subtree: true, childList: true, attributes: true});"""
        )

    def seen_states(self) -> set[str]:
        return set(self.js("return [...(window.seenStates || [])]"))

    def screen(self, width: int, height: int, mobile: bool = False) -> None:
        """Set the viewport's size exactly (a window size leaves it to the browser), and touch for a phone."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1, "mobile": mobile},
        )

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


def _launch(chromium: tuple[str, str]) -> Any:
    browser, driver = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: Selenium Manager (which would download one) never runs
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.fixture(scope="module")
def browsers(chromium: tuple[str, str]) -> Iterator[list[Any]]:
    """Two Chromium sessions (separate profiles), started once for the module."""
    drivers: list[Any] = []
    try:
        drivers.extend(_launch(chromium) for _ in range(2))
        yield drivers
    finally:
        for driver in drivers:
            driver.quit()


@pytest.fixture
def pages(browsers: list[Any]) -> Iterator[tuple[Page, Page]]:
    """The two sessions as pages for one test, which signs in anew; a script error fails it."""
    pages = Page(browsers[0], "left"), Page(browsers[1], "right")
    for page in pages:
        page.screen(*DESKTOP)
        page.driver.get_log("browser")  # what earlier tests left
    yield pages
    for page in pages:
        errors = [line for line in page.logs() if "Uncaught" in line]
        assert not errors, f"{page.name}: script errors {errors}"


def direct(a: str, b: str) -> str:
    return "p:" + ":".join(sorted((a, b)))


def alice_and_bob(pages: tuple[Page, Page], live: Stack, users: Any) -> tuple[Page, Page]:
    """The two pages signed in, alice on the first gateway and bob on the other (pushes cross between them)."""
    alice, bob = pages
    alice.name, bob.name = users.alice, users.bob
    alice.sign_in(live.http(0), users.alice)
    bob.sign_in(live.http(1), users.bob)
    return alice, bob


def first_message(alice: Page, bob: Page, text: str) -> str:
    """Alice starts the chat with bob and writes ``text``; bob opens it and sees it. Returns the conversation."""
    conversation = direct(alice.name, bob.name)
    alice.start_chat(bob.name)
    alice.send(text)
    alice.wait_text(text, state="sent")
    bob.open(conversation)
    bob.wait_text(text)
    return conversation


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _with_client(live: Stack, user: str, work: Callable[[Client], Any], gateway: int = 0) -> Any:
    async with await Client.connect(live.url(gateway), live.token(user)) as client:
        return await work(client)


def until_accepted(read: Callable[[], Any], accept: Callable[[Any], bool], what: str, timeout: float = 30.0) -> Any:
    """Call ``read`` (a look at the server's state) until ``accept`` takes its value; returns it."""
    last: list[Any] = []

    def check() -> bool:
        last[:] = [read()]
        return accept(last[0])

    try:
        wait_until(check, what, timeout, interval=0.2)
    except AssertionError as error:
        raise AssertionError(f"{error}; last read: {last[0] if last else None!r}") from None
    return last[0]


def server_history(live: Stack, user: str, conversation: str) -> list[dict[str, Any]]:
    """Every message of a conversation as the server keeps it, oldest first."""

    async def page_back(client: Client) -> list[dict[str, Any]]:
        messages, before = [], None
        while True:
            page = await client.history(conversation, before, 200)
            messages.extend(page["messages"])
            before = page["next_before_seq"]
            if before is None:
                return messages[::-1]

    return run(_with_client(live, user, page_back))


# ----------------------------------------------------------------------------- development sign-in


async def test_dev_login_issues_tokens_only_where_enabled() -> None:
    """POST /dev/token: a token for a valid user id (whose account it creates on the first
    sign-in; a deactivated one is refused), bad_frame otherwise, and no route when off."""
    secret = "s" * 40
    settings = SimpleNamespace(secret_key=SecretStr(secret), token_ttl_seconds=60, dev_login_enabled=True, dev_login=None)
    # the accounts live in an in-process fakeredis, as the embedded server's do
    services = Services(Settings(_env_file=None, kafka_url=None, redis_url=None, secret_key=SecretStr(secret)), connect(None))

    def client(enabled: bool, address: str = "127.0.0.1", explicit: bool | None = None) -> httpx.AsyncClient:
        these = SimpleNamespace(**{**vars(settings), "dev_login_enabled": enabled, "dev_login": explicit})
        app = Starlette(routes=dev_login.routes(these))
        app.state.backend = SimpleNamespace(settings=these, services=services)
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")

    async with client(True) as on:
        reply = await on.post("/dev/token", json={"user": "alice.b-1"})
        assert reply.status_code == 200 and reply.headers["cache-control"] == "no-store"
        assert tokens.verify(secret, reply.json()["token"]) == "alice.b-1"
        profile = await accounts.get(services, accounts.GetAccount("alice.b-1"))
        assert profile.status == "active"  # registered on the first sign-in
        await accounts.deactivate(services, accounts.Deactivate("alice.b-1"))
        refused = await on.post("/dev/token", json={"user": "alice.b-1"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "user_deactivated"
        for body in ({"user": "al ice"}, {"user": "alice\n"}, {"user": ""}, {"user": "x" * 65}, {"name": "alice"}, ["alice"]):
            refused = await on.post("/dev/token", json=body)
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_frame", body
        not_json = await on.post("/dev/token", content=b"{user")
        assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "bad_json"
    async with client(False) as off:
        assert (await off.post("/dev/token", json={"user": "alice"})).status_code == 404
    # on by default it answers this machine only; IMFLOW_DEV_LOGIN=true opens it to others
    async with client(True, address="10.1.2.3") as remote:
        refused = await remote.post("/dev/token", json={"user": "alice"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    async with client(True, address="10.1.2.3", explicit=True) as opened:
        assert (await opened.post("/dev/token", json={"user": "alice"})).status_code == 200


def test_dev_login_is_on_by_default_only_for_the_embedded_server() -> None:
    from imflow.core.settings import Settings

    def enabled(**values: Any) -> bool:
        return Settings(_env_file=None, **{"kafka_url": None, "redis_url": None, "dev_login": None, **values}).dev_login_enabled

    assert enabled() and enabled(kafka_url="", redis_url="")  # `imflow serve` with nothing configured
    assert not enabled(kafka_url="kafka://127.0.0.1:19092", redis_url="redis://127.0.0.1:16379/0")
    assert enabled(kafka_url="kafka://127.0.0.1:19092", redis_url="redis://127.0.0.1:16379/0", dev_login=True)
    assert not enabled(dev_login=False)


def test_gateway_serves_the_client_and_dev_login(live: Stack) -> None:
    page = httpx.get(f"{live.http(0)}/", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/js/main.js">' in page.text
    for path, kind in (("js/main.js", "javascript"), ("style.css", "text/css"), ("icon.svg", "image/svg+xml")):
        asset = httpx.get(f"{live.http(1)}/static/{path}", timeout=5)
        assert asset.status_code == 200 and kind in asset.headers["content-type"], path
        assert asset.headers["cache-control"] == "no-cache"
    token = httpx.post(f"{live.http(0)}/dev/token", json={"user": "dev-user"}, timeout=5).json()["token"]

    async def sign_in() -> str:
        async with await Client.connect(live.url(1), token) as client:  # any gateway takes it
            return client.user

    assert tokens.verify(SECRET, token) == "dev-user" and run(sign_in()) == "dev-user"


# ----------------------------------------------------------------------------- chatting


def test_two_browsers_chat_and_unread_badges_rise_and_clear(pages: tuple[Page, Page], live: Stack, users: Any) -> None:
    alice, bob = alice_and_bob(pages, live, users)
    conversation = direct(users.alice, users.bob)

    alice.start_chat(users.bob)
    alice.record_states()
    alice.send("Hi Bob!")
    first = alice.wait_text("Hi Bob!", state="sent")
    assert first["mine"] and first["mid"], first
    assert "sending" in alice.seen_states(), "the bubble showed no 'sending' state before 'sent'"

    bob.wait(lambda: bob.unread(conversation) == 1, "a badge of 1")
    bob.wait(lambda: bob.badge_shown(conversation) and bob.total() == 1 and bob.total_shown(), "the badge and a total of 1 shown")
    for text in ("Are you coming tonight?", "Dinner is at 8"):
        alice.send(text)
        alice.wait_text(text, state="sent")
    bob.wait(lambda: bob.unread(conversation) == 3 and bob.total() == 3, "the badge and the total at 3")
    from_carol = direct(users.bob, users.carol)
    run(_with_client(live, users.carol, lambda client: client.send_text(users.bob, "Lunch tomorrow?")))
    bob.wait(lambda: bob.unread(from_carol) == 1 and bob.total() == 4, "a second conversation, the total at 4")
    bob.wait_js("return document.title", "(4) imflow", "the total in the window title")
    bob.wait_js("return [...document.querySelectorAll('li.conversation')].map((li) => li.dataset.conversation)",
                [from_carol, conversation], "the newest conversation first")
    bob.screenshot("conversation-list")

    bob.open(conversation)
    bob.wait(lambda: bob.texts() == ["Hi Bob!", "Are you coming tonight?", "Dinner is at 8"], "the three messages in order")
    bob.wait(lambda: bob.unread(conversation) == 0 and bob.total() == 1, "the badge cleared, the total down to 1")
    bob.wait(lambda: not bob.badge_shown(conversation) and bob.badge_shown(from_carol) and bob.total_shown(),
             "only the other conversation's badge and the total shown")

    async def bob_unread(client: Client) -> tuple[int, dict[str, Any]]:
        sync = await client.sync()
        return sync["total_unread"], {c["conversation"]: c for c in sync["conversations"]}[conversation]

    # the page clears its badge at once; its read report reaches the server a moment later
    until_accepted(lambda: run(_with_client(live, users.bob, bob_unread)),
                   lambda seen: seen[0] == 1 and seen[1]["unread"] == 0 and seen[1]["read_seq"] == 3,
                   "the read reported to the server (total 1; this conversation read to seq 3)")

    bob.send("Yes! See you there")
    alice.wait_text("Yes! See you there")
    # alice has the conversation open: the reply is read at once, no badge rises
    alice.wait(lambda: alice.unread(conversation) == 0 and alice.total() == 0, "no unread for an open conversation")
    alice.wait_value(lambda: [m["mine"] for m in alice.messages()], lambda mine: mine == [True, True, True, False],
                     "three bubbles of mine and bob's reply")
    alice.screenshot("chat-pane")


def test_reload_keeps_history_and_scrolls_back(pages: tuple[Page, Page], live: Stack, users: Any) -> None:
    alice, _ = pages
    alice.name = users.alice
    conversation = direct(users.alice, users.carol)
    texts = [f"Message number {i}" for i in range(1, 71)]  # more than the 50 that Redis keeps (archive below)

    async def carol_sends(client: Client) -> None:
        for text in texts:
            await client.send_text(users.alice, text)

    run(_with_client(live, users.carol, carol_sends, gateway=1))
    alice.sign_in(live.http(0), users.alice)
    alice.wait(lambda: alice.unread(conversation) == 70, "a badge of 70")
    alice.open(conversation)
    alice.wait(lambda: alice.texts()[-1:] == [texts[-1]], "the newest message")
    alice.send("That was a lot")
    alice.wait_text("That was a lot", state="sent")

    def scrolled_back_to_start() -> bool:
        alice.js("document.querySelector('#messages').scrollTop = 0")
        return alice.texts() == [*texts, "That was a lot"]

    alice.wait(scrolled_back_to_start, "all 70 messages after scrolling back")
    # the status line is written once the last page is in, which may be a render after the messages
    alice.wait_text_content("#history-status", "beginning of the conversation", "the beginning of the conversation marked")

    alice.driver.refresh()
    alice.wait(lambda: alice.connection() == "online", "online again after the reload")
    # still signed in, the same conversation open (the address keeps it), the newest messages shown
    alice.wait_js("return document.querySelector('#pane-title')?.textContent", users.carol, "the same conversation open")
    alice.wait(lambda: alice.texts()[-2:] == [texts[-1], "That was a lot"], "the newest messages after the reload")
    alice.wait(scrolled_back_to_start, "all messages again after the reload")
    alice.wait_text_content("#history-status", "beginning of the conversation", "the beginning marked again")
    alice.wait(lambda: alice.unread(conversation) == 0, "nothing unread after the reload")
    assert [m["mine"] for m in alice.messages()].count(True) == 1


def test_group_chat_with_members_and_a_red_packet(pages: tuple[Page, Page], live: Stack, users: Any) -> None:
    alice, bob = alice_and_bob(pages, live, users)
    name = f"Weekend trip {users.alice[-6:]}"

    alice.click("#new-group-button")
    alice.type("#new-group-name", name)
    alice.type("#new-group-members", users.bob)
    alice.click("#new-group-create")
    alice.wait(lambda: alice.js("return document.querySelector('#pane-title')?.textContent") == name, "the new group open")
    conversation = alice.wait_value(
        lambda: alice.js("return document.querySelector('li.conversation[aria-current=true]')?.dataset.conversation ?? null"),
        lambda value: bool(value) and value.startswith("g:"), "the new group marked current in the list")

    alice.click("#members-button")
    alice.type("#add-members-users", users.carol)
    alice.click("#add-members-button")
    members = f"#member-list li[data-user='{users.carol}']"
    alice.wait(lambda: alice.visible(members), "carol in the member list")
    alice.wait_js("return document.querySelectorAll('#member-list li').length", 3, "3 members listed")
    alice.wait_js(f"return document.querySelector(\"#member-list li[data-user='{users.alice}'] .role\")?.textContent", "owner",
                  "alice listed as the owner")
    alice.click("#members-dialog [data-close]")
    alice.wait(lambda: alice.js("return document.querySelector('#pane-subtitle').textContent") == "3 members", "3 members")

    alice.send("Welcome to the trip, everyone")
    alice.wait_text("Welcome to the trip, everyone", state="sent")

    async def carol_says(client: Client) -> None:
        await client.send({"conversation": conversation, "body": {"text": "Glad to be here"}})

    run(_with_client(live, users.carol, carol_says, gateway=1))
    # bob was put in a group he had not heard of: it shows with its name and both messages unread
    bob.wait(lambda: bob.unread(conversation) == 2, "the group with 2 unread")
    group_name = (f"return document.querySelector(\"li.conversation[data-conversation='{conversation}']"
                  " .conversation-name\").textContent")
    bob.wait(lambda: bob.js(group_name) == name, "the group's name (asked with my_groups)")
    bob.open(conversation)
    bob.wait(lambda: bob.texts() == ["Welcome to the trip, everyone", "Glad to be here"], "the group's messages")
    bob.wait_value(lambda: [m["sender"] for m in bob.messages()], lambda senders: senders == [users.alice, users.carol],
                   "the senders' names over others' bubbles")
    bob.wait(lambda: bob.total() == 0, "the group read")

    # a red packet: 3.00 in two shares, grabbed by bob and by alice, who see who got what
    alice.click("#packet-button")
    alice.type("#packet-amount", "3.00")
    alice.type("#packet-count", "2")
    alice.type("#packet-greeting", "Lunch is on me")
    alice.click("#packet-send")
    packet = "#message-list li.message[data-type='red_packet']"
    alice.wait(lambda: alice.js(f"return document.querySelector(\"{packet}\")?.dataset.state") == "sent", "the red packet sent")
    bob.wait(lambda: bob.visible(packet), "the red packet at bob's")
    bob.screenshot("group-chat")

    bob.click(f"{packet} .packet")
    bob.wait(lambda: bob.visible("#packet-mine"), "bob's share")
    bob_share = _cents(bob.wait_text_content("#packet-mine", "¥", "bob's share in money"))
    bob.click("#packet-details button[type=submit]")
    card = f"return document.querySelector(\"{packet} .packet-foot\").textContent"
    bob.wait(lambda: bob.js(card) == f"You got {_money(bob_share)}", "the card showing bob's share")

    alice.click(f"{packet} .packet")
    alice.wait(lambda: alice.js("return document.querySelectorAll('#packet-details .packet-grab').length") == 2,
               "both grabs listed")
    grabs = alice.wait_value(lambda: alice.js(
        """return Object.fromEntries([...document.querySelectorAll('#packet-details .packet-grab')]
             .map((li) => [li.dataset.user, li.querySelector('.amount')?.textContent ?? '']))"""
    ), lambda shown: len(shown) == 2 and all(shown.values()), "both grabs with their amounts")
    assert set(grabs) == {users.alice, users.bob}
    assert _cents(grabs[users.bob]) == bob_share and sum(_cents(v) for v in grabs.values()) == 300, grabs
    alice.wait_text_content(".packet-summary", "2 of 2 shares taken", "the packet's summary")
    alice.screenshot("red-packet")
    alice.click("#packet-details button[type=submit]")

    # a packet the server refuses (over its limit) shows as failed, with the reason, and can go
    alice.click("#packet-button")
    alice.type("#packet-amount", "999.00")
    alice.click("#packet-send")
    refused = "#message-list li.message[data-state='failed']"
    alice.wait(lambda: alice.visible(refused), "the refused packet marked failed")
    alice.wait_text_content(f"{refused} .failure", "at most", "the reason for the refusal")
    alice.click(f"{refused} .discard-button")
    alice.wait(lambda: not alice.visible(refused), "the refused packet gone")

    mid = int(alice.js(f"return document.querySelector(\"{packet}\").dataset.mid"))

    async def carol_grabs(client: Client) -> str:
        try:
            await client.request({"op": "red_packet.grab", "conversation": conversation, "mid": mid})
        except Exception as error:  # the code is what counts
            return str(getattr(error, "code", error))
        return "grabbed"

    assert run(_with_client(live, users.carol, carol_grabs)) == "red_packet.empty"


def _cents(money: str) -> int:
    return round(float(money.strip().lstrip("¥")) * 100)


def _money(cents: int) -> str:
    return f"¥{cents / 100:.2f}"


def test_phone_sized_screen_alternates_list_and_pane(pages: tuple[Page, Page], live: Stack, users: Any) -> None:
    alice, _ = pages
    alice.name = users.alice
    conversation = direct(users.alice, users.dave)
    alice.screen(*PHONE, mobile=True)
    try:
        alice.sign_in(live.http(0), users.alice)
        run(_with_client(live, users.dave, lambda client: client.send_text(users.alice, "Are you on your phone?")))
        alice.wait(lambda: alice.unread(conversation) == 1, "the conversation in the list")
        alice.wait(lambda: alice.visible(".sidebar") and not alice.visible("#pane"), "the list alone on the screen")
        assert alice.js("return document.documentElement.scrollWidth") <= PHONE[0]  # nothing sticks out sideways
        alice.screenshot("phone-list")

        alice.open(conversation)
        alice.wait(lambda: alice.texts() == ["Are you on your phone?"], "the message")
        alice.wait(lambda: alice.visible("#pane") and not alice.visible(".sidebar") and alice.visible(".back-button"),
                   "the pane alone on the screen, with a way back")
        alice.send("Yes, this works nicely")
        alice.wait_text("Yes, this works nicely", state="sent")
        width = alice.js("return document.querySelector('#composer').getBoundingClientRect().width")
        assert width <= PHONE[0] and alice.js("return document.documentElement.scrollWidth") <= PHONE[0]
        alice.screenshot("phone-chat")

        alice.click(".back-button")
        alice.wait(lambda: alice.visible(".sidebar") and not alice.visible("#pane"), "the list again")
        alice.wait(lambda: alice.unread(conversation) == 0, "the conversation read")
    finally:
        alice.screen(*DESKTOP)


# ----------------------------------------------------------------------------- contacts and blocking


def set_profile(live: Stack, user: str, **fields: Any) -> None:
    """Change a user's profile as the app's backend does (admin API, PATCH /admin/users/{user})."""
    reply = httpx.patch(f"{live.http(0)}/admin/users/{user}", json=fields,
                        headers={"Authorization": f"Bearer {ADMIN_SECRET}"}, timeout=5)
    assert reply.status_code == 200, reply.text


def test_a_friend_request_with_a_note_accepted_makes_contacts_who_see_each_others_presence(
    pages: tuple[Page, Page], live: Stack, users: Any,
) -> None:
    alice, bob = alice_and_bob(pages, live, users)  # signing in creates the accounts
    set_profile(live, users.alice, display_name="Alice Liddell", avatar_url=f"{live.http(0)}/static/icon.svg",
                custom={"city": "Oxford"})
    note = "Hi Bob, it's Alice from the trip"

    alice.click("#tab-contacts")
    alice.click("#add-contact-button")
    alice.type("#contact-request-user", users.bob)
    alice.type("#contact-request-note", note)
    alice.click("#contact-request-send")
    outgoing = f"#outgoing-requests li[data-user='{users.bob}']"
    alice.wait_text_content(f"{outgoing} .note", note, "the request waiting among alice's, with its note")

    # pushed to bob: a badge on his Contacts tab, the request with alice's name, picture and note
    bob.wait_js("return document.querySelector('#requests-badge:not([hidden])')?.dataset.count ?? null", "1",
                "a request counted on bob's Contacts tab")
    bob.click("#tab-contacts")
    incoming = f"#incoming-requests li[data-user='{users.alice}']"
    bob.wait_text_content(f"{incoming} .note", note, "alice's request with her note")
    bob.wait_text_content(f"{incoming} .person-name", "Alice Liddell", "alice's display name (the profiles frame)")
    bob.wait(lambda: bob.js(f"return document.querySelector(\"{incoming} .avatar img\")?.complete === true"
                            f" && document.querySelector(\"{incoming} .avatar img\").naturalWidth > 0"), "alice's picture")
    bob.screenshot("contact-request")
    bob.click(f"{incoming} .accept-button")

    # both are contacts now, each online to the other (watch_presence, then presence pushes)
    for page, peer in ((alice, users.bob), (bob, users.alice)):
        contact = f"#contact-list li[data-user='{peer}']"
        page.wait_js(f"return document.querySelector(\"{contact}\")?.dataset.online ?? null", "true", f"{peer} listed online")
        page.wait_js(f"return document.querySelector(\"{contact} .presence-dot\")?.dataset.online ?? null", "true",
                     f"{peer}'s presence dot")
        page.wait(lambda page=page: not page.visible("#requests-section"), "no request pending any more")
    assert not bob.visible("#requests-badge")

    bob.click(f"#contact-list li[data-user='{users.alice}'] .person-main")
    bob.wait_text_content("#profile-name", "Alice Liddell", "alice's profile in the pane")
    bob.wait_text_content("#profile-relation", "Contact since", "alice a contact in her profile")
    bob.wait_text_content(".profile-custom", "Oxford", "alice's custom field")
    bob.wait_js("return document.querySelector('#profile-presence')?.textContent", "Online", "alice online in her profile")
    bob.screenshot("profile")

    # the lists come from the server: a reload shows the same, and bob's presence again
    alice.driver.refresh()
    alice.wait(lambda: alice.connection() == "online", "online again after the reload")
    alice.click("#tab-contacts")
    alice.wait_js(f"return document.querySelector(\"#contact-list li[data-user='{users.bob}']\")?.dataset.online ?? null",
                  "true", "bob listed online after the reload")
    # alice leaves: bob's page sees her go offline, with a last-seen time
    alice.driver.get("about:blank")  # the page closes its socket on the way out (the bfcache keeps the page)
    bob.wait_text_content("#profile-presence", "Last seen", "alice offline in her profile, seen just now")
    bob.wait_js(f"return document.querySelector(\"#contact-list li[data-user='{users.alice}']\")?.dataset.online ?? null",
                "false", "alice listed offline")

    async def contacts_of(client: Client) -> list[str]:
        reply = await client.request({"op": "contacts"})
        return [contact["user"] for contact in reply["contacts"]]

    assert run(_with_client(live, users.bob, contacts_of)) == [users.alice]


def test_a_blocked_users_message_is_refused_with_its_code_and_the_blocker_never_sees_it(
    pages: tuple[Page, Page], live: Stack, users: Any,
) -> None:
    alice, bob = alice_and_bob(pages, live, users)
    conversation = first_message(alice, bob, "Hello Bob")

    # bob blocks alice from her profile, which the conversation's header leads to
    bob.click("#profile-link")
    bob.click("#profile-block")
    bob.wait(lambda: bob.visible("#profile-unblock"), "alice blocked (her profile offers to unblock)")
    bob.click("#tab-contacts")
    blocked = f"#blocked-list li[data-user='{users.alice}']"
    bob.wait(lambda: bob.visible(blocked), "alice in bob's blocked list")

    alice.send("Can you see this?")
    refused = "#message-list li.message[data-state='failed']"
    alice.wait_js(f"return document.querySelector(\"{refused}\")?.dataset.code ?? null", "blocked",
                  "the message refused as blocked")
    alice.wait_text_content(f"{refused} .failure", "(blocked)", "the code shown on the refused message")
    alice.screenshot("blocked-message")
    # a friend request is refused the same way, in the dialog
    alice.click("#tab-contacts")
    alice.click("#add-contact-button")
    alice.type("#contact-request-user", users.bob)
    alice.click("#contact-request-send")
    alice.wait_js("return document.querySelector('#contact-request-dialog .form-error').dataset.code", "blocked",
                  "the friend request refused as blocked")
    alice.wait_text_content("#contact-request-dialog .form-error", "(blocked)", "the code shown in the dialog")
    alice.click("#contact-request-dialog [data-close]")

    # bob's page shows the block, and nothing of the refused message; neither does the server
    bob.click("#tab-chats")
    bob.open(conversation)
    bob.wait_text_content("#conversation-notice", "You blocked", "the block noted over bob's composer")
    bob.wait(lambda: bob.texts() == ["Hello Bob"], "only the message from before the block")
    assert [m["body"]["text"] for m in server_history(live, users.bob, conversation)] == ["Hello Bob"]

    # unblocked, alice's next message arrives; the refused one never does (it was not stored)
    bob.click("#tab-contacts")
    bob.click(f"{blocked} .unblock-button")
    bob.wait(lambda: not bob.visible("#blocked-section"), "nobody blocked any more")
    alice.click("#tab-chats")
    alice.click(f"{refused} .discard-button")
    alice.send("And now?")
    alice.wait_text("And now?", state="sent")
    bob.click("#tab-chats")
    bob.open(conversation)
    bob.wait(lambda: bob.texts() == ["Hello Bob", "And now?"], "the message after the unblock, and nothing between")
    assert not bob.visible("#conversation-notice")
    assert [m["body"]["text"] for m in server_history(live, users.bob, conversation)] == ["Hello Bob", "And now?"]


def test_conversation_settings_and_privacy_follow_on_the_users_other_device(
    pages: tuple[Page, Page], live: Stack, users: Any,
) -> None:
    """One user on two browsers (two gateways): a pin, a mute, a hide, a mark-unread and the
    privacy setting made on one show on the other through the pushes."""
    laptop, phone = pages
    laptop.name, phone.name = f"{users.alice}-laptop", f"{users.alice}-phone"
    from_carol, from_dave = direct(users.alice, users.carol), direct(users.alice, users.dave)
    laptop.sign_in(live.http(0), users.alice)
    phone.sign_in(live.http(1), users.alice)
    run(_with_client(live, users.carol, lambda client: client.send_text(users.alice, "Hi from Carol")))
    run(_with_client(live, users.dave, lambda client: client.send_text(users.alice, "Hi from Dave")))
    item = "li.conversation[data-conversation='{}']"

    def flag(page: Page, conversation: str, name: str) -> str | None:
        return page.js(f"return document.querySelector(\"{item.format(conversation)}\")?.dataset.{name} ?? null")

    def listed(page: Page) -> list[str]:
        return page.js("return [...document.querySelectorAll('li.conversation')].map((li) => li.dataset.conversation)")

    for page in (laptop, phone):
        page.wait(lambda page=page: listed(page) == [from_dave, from_carol], "both conversations, the newest first")

    laptop.open(from_carol)
    laptop.click("#pin-button")
    laptop.click("#mute-button")
    for page in (laptop, phone):
        page.wait(lambda page=page: flag(page, from_carol, "pinned") == "true" and flag(page, from_carol, "muted") == "true",
                  "carol's conversation pinned and muted")
        page.wait(lambda page=page: listed(page) == [from_carol, from_dave], "the pinned conversation first")

    phone.open(from_dave)
    phone.click("#mark-unread-button")  # closes it, or it would be read at once
    laptop.wait(lambda: flag(laptop, from_dave, "markedUnread") == "true"
                and laptop.visible(f"{item.format(from_dave)} .marked-unread"), "dave's conversation marked unread on the laptop")
    laptop.screenshot("conversation-settings")
    laptop.open(from_dave)  # reading it clears the mark everywhere
    phone.wait(lambda: flag(phone, from_dave, "markedUnread") == "false", "the mark cleared on the phone by the laptop's read")

    laptop.open(from_carol)
    laptop.click("#hide-button")
    for page in (laptop, phone):
        page.wait(lambda page=page: listed(page) == [from_dave], "carol's conversation hidden")
        page.wait_text_content("#hidden-toggle", "(1)", "one hidden conversation to show on request")
    run(_with_client(live, users.carol, lambda client: client.send_text(users.alice, "Still there?")))
    for page in (laptop, phone):  # a new message un-hides it
        page.wait(lambda page=page: listed(page) == [from_carol, from_dave], "carol's conversation back, pinned first")

    laptop.click("#settings-button")
    laptop.click("#dm-contacts")
    laptop.wait(lambda: laptop.visible("#privacy-saved"), "the privacy setting saved")
    laptop.click("#privacy-done")
    phone.click("#settings-button")
    phone.wait(lambda: phone.js("return document.querySelector('#dm-contacts').checked"), "contacts only, on the phone too")
    phone.screenshot("privacy")
    phone.click("#privacy-done")

    async def carol_tries(client: Client) -> str:
        try:
            await client.send_text(users.alice, "Can I still write?")
        except Exception as error:  # the code is what counts
            return str(getattr(error, "code", error))
        return "sent"

    assert run(_with_client(live, users.carol, carol_tries)) == "contacts_only"


# ----------------------------------------------------------------------------- images, recall, edit, receipts


def bubble(page: Page, seq: int) -> dict[str, Any] | None:
    """The open conversation's message ``seq`` as the page shows it (None while it is not there)."""
    return page.js(
        """const li = document.querySelector(`#message-list li.message[data-seq='${arguments[0]}']`);
           if (!li) return null;
           const img = li.querySelector('img.attachment-image');
           return {type: li.dataset.type, state: li.dataset.state, text: li.querySelector('.text')?.textContent ?? null,
                   recalled: li.dataset.recalled === 'true', edited: li.dataset.edited === 'true',
                   receipt: li.dataset.receipt ?? null, file: li.querySelector('.file-name')?.textContent ?? null,
                   image: img ? {loaded: img.dataset.loaded === 'true' && img.complete, width: img.naturalWidth,
                                 height: img.naturalHeight, src: img.getAttribute('src')} : null,
                   actions: [...li.querySelectorAll('.message-actions button')].map((b) => b.textContent)}""",
        seq,
    )


def test_an_image_and_a_file_sent_show_on_the_other_side_with_the_images_thumbnail(
    pages: tuple[Page, Page], live: Stack, users: Any, tmp_path: Path,
) -> None:
    from PIL import Image

    alice, bob = alice_and_bob(pages, live, users)
    conversation = first_message(alice, bob, "Look at this")
    picture, notes = tmp_path / "sunset.png", tmp_path / "notes.txt"
    Image.new("RGB", (640, 480), (250, 120, 40)).save(picture)
    notes.write_text("bring snacks\n")

    alice.driver.find_element(By.CSS_SELECTOR, "#attach-input").send_keys(str(picture))  # as choosing it does
    shown = bob.wait_value(lambda: bubble(bob, 2), lambda b: bool(b and b["image"] and b["image"]["loaded"]),
                           "the image loaded on bob's side")
    assert shown["type"] == "image" and shown["image"]["src"].startswith("/plugins/attachments/object?")
    assert (shown["image"]["width"], shown["image"]["height"]) == (320, 240), "the thumbnail, not the 640x480 original"
    alice.wait_value(lambda: bubble(alice, 2),
                     lambda b: bool(b and b["state"] == "sent" and b["image"] and b["image"]["loaded"]
                                    and b["image"]["width"] == 320),
                     "the sent image's thumbnail at alice's (the server's body replaces the page's own)")

    alice.driver.find_element(By.CSS_SELECTOR, "#attach-input").send_keys(str(notes))
    bob.wait_value(lambda: bubble(bob, 3), lambda b: bool(b and b["type"] == "file" and b["file"] == "notes.txt"),
                   "the file card on bob's side")
    href = bob.wait_value(lambda: bob.js("return document.querySelector(`#message-list li.message[data-seq='3'] a.file-card`)"
                                         "?.href ?? ''"), lambda url: "/plugins/attachments/object?" in url,
                          "the file's download URL")
    download = httpx.get(href, timeout=10)
    assert download.status_code == 200 and download.text == "bring snacks\n"
    assert download.headers["content-disposition"].startswith("attachment")
    bob.screenshot("image-and-file")

    stored = server_history(live, users.bob, conversation)
    assert [m["type"] for m in stored] == ["text", "image", "file"]
    assert stored[1]["body"]["width"] == 640 and stored[1]["body"]["thumbnail"].endswith(f".thumb@{users.alice}")
    assert stored[2]["body"]["name"] == "notes.txt" and stored[2]["body"]["size"] == len("bring snacks\n")


def test_edit_and_recall_of_ones_own_messages_show_on_both_sides(pages: tuple[Page, Page], live: Stack, users: Any) -> None:
    alice, bob = alice_and_bob(pages, live, users)
    conversation = first_message(alice, bob, "See you at 7")
    assert bob.wait_value(lambda: bubble(bob, 1), bool, "bob's copy")["actions"] == [], "nothing to do to someone else's message"
    alice.wait_value(lambda: bubble(alice, 1), lambda b: bool(b) and b["actions"] == ["Edit", "Recall"],
                     "edit and recall offered")

    alice.click_until("#message-list li.message[data-seq='1'] .edit-button",
                      lambda: alice.js("return document.querySelector('#composer-text').value") == "See you at 7",
                      "the text in the composer")
    alice.wait(lambda: alice.visible("#edit-cancel"), "the composer in edit mode")
    alice.send("See you at 8")
    for page in (alice, bob):
        page.wait_value(lambda page=page: bubble(page, 1), lambda b: bool(b and b["text"] == "See you at 8" and b["edited"]),
                        "the edited text, marked edited")
    assert alice.texts() == ["See you at 8"], "an edit is no new message"
    bob.wait_text_content("#message-list li.message[data-seq='1'] .edited", "edited", "the edited mark shown")

    alice.send("Wrong chat, sorry")
    bob.wait_text("Wrong chat, sorry")
    alice.click("#message-list li.message[data-seq='2'] .recall-button")
    for page, who in ((alice, "You"), (bob, users.alice)):
        page.wait_value(lambda page=page: bubble(page, 2), lambda b, who=who: bool(b and b["recalled"]
                        and b["text"] == f"{who} recalled a message"), "the recalled message's tombstone")
    assert "Wrong chat, sorry" not in bob.texts()
    bob.screenshot("edited-and-recalled")

    stored = server_history(live, users.bob, conversation)
    assert stored[0]["body"] == {"text": "See you at 8"} and stored[0]["version"] == 2
    assert stored[1]["body"] == {} and stored[1]["recalled_by"] == users.alice


def test_a_one_to_one_read_receipt_shows_once_the_peer_reads(pages: tuple[Page, Page], live: Stack, users: Any) -> None:
    alice, bob = alice_and_bob(pages, live, users)
    conversation = direct(users.alice, users.bob)
    alice.start_chat(users.bob)
    alice.send("Did you read this?")
    alice.wait_text("Did you read this?", state="sent")
    bob.wait(lambda: bob.unread(conversation) == 1, "bob's badge: not read yet")
    assert bubble(alice, 1)["receipt"] is None, "no receipt before bob opens the conversation"

    bob.open(conversation)
    alice.wait_value(lambda: bubble(alice, 1), lambda b: bool(b and b["receipt"] == "read"), "the message marked read")
    assert alice.js("return document.querySelector(`#message-list li.message[data-seq='1'] .state`).title") == "Read"
    alice.wait_text_content("#message-list li.message[data-seq='1'] .receipt-caption", "Read", "the Read caption")
    alice.send("Great, see you")  # bob has it open: read at once, and the caption moves down
    alice.wait_value(lambda: alice.js("return [...document.querySelectorAll('#message-list .receipt-caption')]"
                                      ".map((el) => el.closest('li').dataset.seq)"), lambda seqs: seqs == ["2"],
                     "the Read caption under the newest message read only")
    alice.screenshot("read-receipt")


# ----------------------------------------------------------------------------- a gateway dies


def kill_gateway(live: Stack, index: int) -> None:
    """SIGKILL: no clean shutdown, connections drop at once."""
    process = live.gateways[index]
    process.proc.send_signal(signal.SIGKILL)
    process.proc.wait(10)
    process.terminate()  # closes its log


def start_gateway_again(live: Stack, index: int) -> None:
    """A new gateway process on the same port (where the pages reconnect), with the same settings."""
    process, _, ready = start_listening(["gateway"], live.env, live.folder / f"gateway{index}-again.log", live.folder,
                                        port=live.ports[index])
    live.gateways[index] = process  # the stack stops this one at the end
    assert ready.status_code == 200, process.output()


def test_a_killed_and_restarted_gateway_loses_no_message(pages: tuple[Page, Page], live: Stack, users: Any) -> None:
    alice, bob = alice_and_bob(pages, live, users)
    conversation = first_message(alice, bob, "Before the crash")

    kill_gateway(live, 0)
    try:
        alice.wait(lambda: alice.connection() != "online", "alice's page noticing the lost connection")
        alice.wait(lambda: alice.visible("#connection-banner"), "the reconnecting banner")
        for text in ("Are you there?", "Your gateway seems down"):
            bob.send(text)  # bob's gateway is alive: these wait in alice's inbox
            bob.wait_text(text, state="sent")
        alice.send("Written while offline")
        alice.wait_text("Written while offline", state="retrying")
        alice.screenshot("reconnecting")
    finally:  # whatever happened, the stack gets its gateway back
        start_gateway_again(live, 0)
    alice.wait(lambda: alice.connection() == "online", "alice's page reconnected by itself")
    expected = ["Before the crash", "Are you there?", "Your gateway seems down", "Written while offline"]
    alice.wait_text("Written while offline", state="sent")
    alice.wait(lambda: alice.texts() == expected, "the resynced conversation")
    bob.wait(lambda: bob.texts() == expected, "alice's offline message at bob's, once")
    alice.wait(lambda: not alice.visible("#connection-banner"), "the reconnecting banner gone")
    alice.wait(lambda: alice.total() == 0, "nothing unread in the open conversation")
    alice.wait_value(lambda: {m["mid"] for m in alice.messages()}, lambda mids: len(mids) == 4 and None not in mids,
                     "four bubbles, each with its own mid")

    stored = server_history(live, users.alice, conversation)
    assert [m["body"]["text"] for m in stored] == expected  # stored once each
    assert [m["seq"] for m in stored] == [1, 2, 3, 4]



# ----------------------------------------------------------------------------- live rooms


def test_live_room_with_a_host_chat_and_gifts_across_gateways(pages: tuple[Page, Page], live: Stack, users: Any) -> None:
    """One hosts a live room, the other joins through the other gateway: both see every message in order."""
    host, viewer = pages
    host.name, viewer.name = users.alice, users.bob
    room = f"show-{users.alice[-6:]}"
    host.sign_in(live.http(0), users.alice)
    viewer.sign_in(live.http(1), users.bob)

    def enter(page: Page, button: str) -> None:
        page.click("#rooms-button")
        page.type("#room-name", room)
        page.click(button)
        page.wait(lambda: page.js("return document.body.dataset.room") == "joined"
                  and page.js("return document.querySelector('#room-title').textContent") == room, f"in the room {room}")

    def lines(page: Page) -> list[tuple[str, str, str]]:
        return [tuple(item) for item in page.js(
            """return [...document.querySelectorAll('#room-message-list li.room-message')]
                 .map((li) => [li.dataset.sender, li.dataset.kind, li.querySelector('.text').textContent])""")]

    def viewers(page: Page) -> str:
        return page.js("return document.querySelector('#room-viewers').dataset.count")

    enter(host, "#room-host-button")  # room.open, then room.join
    host.wait(lambda: host.visible("#room-host-badge") and host.visible("#room-view") and not host.visible("#pane-empty"),
              "the room shown with the host's badge")
    enter(viewer, "#room-join-button")
    viewer.wait_js("return document.querySelector('#room-host')?.dataset.host", users.alice, "the room's host named")
    assert not viewer.visible("#room-host-badge")
    viewer.wait_js(f"return document.querySelector(\"#room-list li.room[data-room='{room}']\")?.getAttribute('aria-current')",
                   "true", "the room marked current in the list")

    said = [
        (host, users.alice, "chat", "Welcome to the show"),
        (viewer, users.bob, "chat", "Hello from the other gateway"),
        (viewer, users.bob, "gift", "A rose for the host"),
        (host, users.alice, "chat", "Thank you!"),
    ]
    for number, (page, _, kind, text) in enumerate(said, 1):
        page.type("#room-text", text)
        page.click("#room-gift-button" if kind == "gift" else "#room-send")
        expected = [(s, k, t) for _, s, k, t in said[:number]]
        for someone in (host, viewer):  # each message at both before the next: the order is the order said
            someone.wait(lambda someone=someone, expected=expected: lines(someone) == expected,
                         f"{number} room messages in order")

    assert viewer.js("return document.querySelectorAll('#room-message-list li.gift').length") == 1
    assert viewer.js("return document.querySelector('#room-message-list li.gift').dataset.sender") == users.bob
    for page in (host, viewer):  # room.info refreshes the count every few seconds
        page.wait(lambda page=page: viewers(page) == "2", "2 viewers")
    host.wait_js("return document.querySelector('#room-text').value", "", "the host's input cleared after sending")
    viewer.screenshot("live-room")

    viewer.click("#room-leave")  # room.leave: the count drops for the host
    viewer.wait(lambda: not viewer.visible("#room-view") and viewer.visible("#pane-empty"), "the room closed")
    host.wait(lambda: viewers(host) == "1", "1 viewer after the other left")
