"""Debian's Chromium driven by Playwright (never `playwright install`: no browser
downloads here), headless, with a fresh profile per test."""

import os
from pathlib import Path

import pytest
from comfyui_env import HUNG_AFTER_S

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
# one folder per test environment: scripts/run_tests.sh runs them at the same time
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts" / "browser" / os.environ.get("M2CHAT_TEST_ENV", "default")


@pytest.fixture(scope="session")
def browser_context_factory(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs Debian's chromium).")
    with sync_playwright() as playwright:
        contexts = []

        def new_context():
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
                headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 900})
            # No wall-clock limit on a loaded machine: every wait (page loads, clicks, the
            # frontend updating) may take until the test is plainly hung.
            context.set_default_timeout(HUNG_AFTER_S * 1000)
            contexts.append(context)
            return context

        yield new_context
        for context in contexts:
            context.close()


@pytest.fixture
def page(browser_context_factory):
    context = browser_context_factory()
    page = context.pages[0] if context.pages else context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


# The frontend is done starting once its own first graph (the default one on a fresh profile)
# is the open workflow; a graph loaded before that is replaced by it (frontend 1.49 has
# window.app and a graph ~0.2 s earlier).
FRONTEND_STARTED = "() => !!(window.LiteGraph && window.app?.extensionManager?.workflow?.activeWorkflow)"


@pytest.fixture
def open_app(page):
    """Opens ComfyUI's page at a URL and waits until the frontend has finished starting."""
    def open_app_at(url: str):
        page.goto(url)
        page.wait_for_function(FRONTEND_STARTED)
    return open_app_at


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
