"""The operator console in a real browser (headless Chromium driven by Selenium) against the
fault stack's coordinator: sign in, filter the list, open a stuck transaction (its participant
frozen) and abort it through its button; the outcome is read from the log and the ledgers. A
read-only token sees no action button and is refused the action; a forged form is refused.
Each page is photographed (``TXN_SCREENSHOTS=dir`` keeps them; docs/console/ has a few)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.helpers import (
    TEST_API_TOKEN,
    VIEWER_TOKEN,
    api_client,
    balances,
    fetch,
    open_accounts,
    participant_dsns,
    prepared_xacts,
    twopc_transfer,
    unique,
    wait_terminal,
)
from txn_devstack.stack import Stack

OPENING = 100


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, (
        "the console's browser tests need Chromium and its driver: apt-get install chromium "
        "chromium-driver (./run tests installs them when it can)"
    )
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=DriverService(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()  # stops chromedriver (by its PID) and the browser it started


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    wanted = os.environ.get("TXN_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def snap(driver: webdriver.Chrome, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), name
    assert path.stat().st_size > 10_000, f"{name}: an empty page?"


def go(driver: webdriver.Chrome, element: WebElement) -> None:
    """Click what leads to another page, and wait until the browser has left this one."""
    element.click()

    def left(_driver: webdriver.Chrome) -> bool:
        try:
            element.is_enabled()
        except WebDriverException:
            # Stale, or (chromedriver, mid-navigation) "does not belong to the document".
            return True
        return False

    WebDriverWait(driver, 15).until(left)


def sign_in(driver: webdriver.Chrome, base: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/console")
    assert driver.current_url.startswith(f"{base}/console/login"), driver.current_url
    driver.find_element(By.ID, "token").send_keys(token)
    go(driver, driver.find_element(By.ID, "sign-in"))
    assert driver.current_url == f"{base}/console", driver.current_url


async def stuck_2pc(client: httpx.AsyncClient, stack: Stack, account: str, gid: str) -> None:
    """A 2PC waiting for ledger3's vote (ledger3 is frozen by the caller)."""
    body = {**twopc_transfer(gid, account, {"ledger1": -5, "ledger3": 5}), "timeout_s": 120}
    reply = await client.post(f"{stack.coordinators[0].url}/v1/transactions", json=body)
    assert reply.status_code == 201 and reply.json()["status"] == "preparing", reply.text


async def test_an_operator_aborts_a_stuck_transaction_in_the_browser(
    fault_stack: Stack, browser: webdriver.Chrome, shots: Path
) -> None:
    base = fault_stack.coordinators[0].url
    ledger3 = fault_stack.service("ledger3")
    dsns = participant_dsns(fault_stack)
    account, prefix = unique("console"), unique("stuck")
    gid = f"{prefix}-1"
    async with api_client(timeout=15) as client:
        await open_accounts(
            client, {p.name: p.url for p in fault_stack.participants}, account, OPENING
        )
        ledger3.signal(signal.SIGSTOP)
        try:
            await stuck_2pc(client, fault_stack, account, gid)
            await asyncio.to_thread(sign_in, browser, base, TEST_API_TOKEN)
            assert "dev-admin (admin)" in browser.find_element(By.ID, "signed-in-as").text
            snap(browser, shots, "overview")

            def filter_and_open() -> None:
                go(browser, browser.find_element(By.LINK_TEXT, "Transactions"))
                Select(browser.find_element(By.ID, "f-status")).select_by_visible_text("preparing")
                browser.find_element(By.ID, "f-gid").send_keys(prefix)
                go(browser, browser.find_element(By.ID, "apply"))
                rows = browser.find_elements(By.CSS_SELECTOR, "#transactions a.gid")
                assert [r.text for r in rows] == [gid]
                snap(browser, shots, "transactions")
                go(browser, rows[0])
                assert browser.find_element(By.ID, "status").text == "preparing"
                assert browser.find_element(By.ID, "gid").text == gid
                snap(browser, shots, "transaction")
                go(browser, browser.find_element(By.ID, "action-abort"))
                snap(browser, shots, "confirm")
                browser.find_element(By.ID, "note").send_keys("ledger3 frozen; customer waiting")
                go(browser, browser.find_element(By.ID, "confirm"))
                assert "abort recorded" in browser.find_element(By.ID, "done").text
                assert browser.find_element(By.ID, "status").text in ("aborting", "aborted")
                go(browser, browser.find_element(By.LINK_TEXT, "Participants"))
                assert browser.find_elements(By.CSS_SELECTOR, "#participants tbody tr")
                snap(browser, shots, "participants")

            await asyncio.to_thread(filter_and_open)
            # From the log itself: decided by the operator, named, with the note.
            rows = await fetch(
                fault_stack.log_dsn,
                "SELECT status, reason, timeline FROM transactions WHERE gid = $1",
                gid,
            )
            assert rows[0]["status"] in ("aborting", "aborted")
            assert rows[0]["reason"] == "aborted by dev-admin: ledger3 frozen; customer waiting"
            assert '"kind": "operator:abort"' in rows[0]["timeline"]
        finally:
            ledger3.signal(signal.SIGCONT)
        txn = await wait_terminal(client, base, gid, timeout_s=60)
    assert txn["status"] == "aborted", txn
    assert await balances(dsns, account) == {n: OPENING for n in dsns}
    for dsn in dsns.values():
        assert gid not in " ".join(await prepared_xacts(dsn))


async def test_a_reader_sees_no_action_and_forged_forms_are_refused(
    fault_stack: Stack, browser: webdriver.Chrome, shots: Path
) -> None:
    base = fault_stack.coordinators[0].url
    ledger3 = fault_stack.service("ledger3")
    account, gid = unique("viewer"), unique("viewed")
    async with api_client(timeout=15) as client:
        await open_accounts(
            client, {p.name: p.url for p in fault_stack.participants}, account, OPENING
        )
        ledger3.signal(signal.SIGSTOP)
        try:
            await stuck_2pc(client, fault_stack, account, gid)

            def as_viewer() -> dict[str, str]:
                sign_in(browser, base, VIEWER_TOKEN)
                assert "viewer (read)" in browser.find_element(By.ID, "signed-in-as").text
                browser.get(f"{base}/console/transactions/{gid}")
                assert browser.find_element(By.ID, "status").text == "preparing"
                assert not browser.find_elements(By.CSS_SELECTOR, "[id^=action-]")
                browser.get(f"{base}/console/transactions/{gid}/abort")
                assert "lacks scope 'admin'" in browser.find_element(By.ID, "error").text
                viewer = {c["name"]: c["value"] for c in browser.get_cookies()}
                sign_in(browser, base, TEST_API_TOKEN)
                browser.get(f"{base}/console/transactions/{gid}/abort")
                csrf = browser.find_element(By.NAME, "csrf").get_attribute("value") or ""
                admin = {c["name"]: c["value"] for c in browser.get_cookies()}
                go(browser, browser.find_element(By.ID, "sign-out"))
                assert "/console/login" in browser.current_url
                browser.get(f"{base}/console")
                assert "/console/login" in browser.current_url  # signed out
                return {
                    "viewer": viewer["txn_console"],
                    "admin": admin["txn_console"],
                    "csrf": csrf,
                }

            got = await asyncio.to_thread(as_viewer)
            form = {"note": "forged", "csrf": got["csrf"]}
            url = f"{base}/console/transactions/{gid}/abort"

            async def post(
                cookie: str, data: dict[str, str], headers: dict[str, str] | None = None
            ) -> httpx.Response:
                async with httpx.AsyncClient(timeout=15, cookies={"txn_console": cookie}) as raw:
                    return await raw.post(url, data=data, headers=headers)

            # A reader's session, even with a valid-looking form: refused.
            reader = await post(got["viewer"], form)
            # An admin's session, without the form's CSRF token, or from another site.
            no_csrf = await post(got["admin"], {"note": "forged"})
            other_site = await post(got["admin"], form, {"Origin": "http://evil.example"})
            tampered = await post(got["admin"][:-2] + "xx", form)
            assert [r.status_code for r in (reader, no_csrf, other_site, tampered)] == [403] * 4
            still = (await client.get(f"{base}/v1/transactions/{gid}")).json()
            assert still["status"] == "preparing"
            assert not any(e["kind"].startswith("operator:") for e in still["events"])
            done = await client.post(
                f"{base}/v1/transactions/{gid}/abort", json={"note": "cleanup"}
            )
            assert done.status_code == 200, done.text
        finally:
            ledger3.signal(signal.SIGCONT)
        assert (await wait_terminal(client, base, gid, timeout_s=60))["status"] == "aborted"
