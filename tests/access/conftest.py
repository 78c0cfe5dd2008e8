"""Fixtures for the sign-in tests: the real OIDC provider, oauth2-proxy and
Chromium (see accesskit.py and tests/README.md).

- `idp`: the provider with users alice (data-scientists), vera (viewers),
  adam (admins) and olga (outsiders: signs in, is in no allowed group);
  `.issuer`, `.client_id`, `.client_secret`, `.tenant`, `.users` (name ->
  User: password, groups, oid), `.groups` (name -> object id),
  `.token(user, scope=...)`, `.refresh(refresh_token)`.
- `start_idp(users, groups, access_token_ttl=...)`: another provider, e.g.
  with short-lived access tokens for refresh tests.
- `oauth2_proxy_binary`, `start_proxy(args, env=None, port=None) -> url`:
  oauth2-proxy with `args` on `port` or a free one (accesskit.start_proxy
  adds the address, the redirect URL and a cookie secret unless given);
  stopped after the test. `accesskit.oidc_proxy_args(idp)` points it at the
  provider with plain flags; `chartproxy.signin_proxy(...)` gives the args
  and files the chart renders for its sign-in Deployment.
- `upstream`: the local backend stand-in (accesskit.Upstream).
- `browser`: headless Chromium driven by Selenium; skips naming the Debian
  packages when they are missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import accesskit
import pytest

USERS = {
    "alice@example.com": ["data-scientists"],
    "vera@example.com": ["viewers"],
    "adam@example.com": ["admins"],
    "olga@example.com": ["outsiders"],
}
GROUPS = ["admins", "data-scientists", "viewers", "outsiders"]


def _binary(name: str) -> Path:
    try:
        return accesskit.tool_binary(name)
    except accesskit.ToolUnavailable as exc:
        pytest.skip(reason=str(exc))


@pytest.fixture(scope="session")
def oidc_server_binary() -> Path:
    return _binary("oidc-server")


@pytest.fixture(scope="session")
def oauth2_proxy_binary() -> Path:
    return _binary("oauth2-proxy")


@pytest.fixture(scope="session")
def start_idp(oidc_server_binary: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Callable[..., accesskit.Idp]]:
    started: list[accesskit.Idp] = []

    def start(users: dict[str, list[str]] = USERS, groups: list[str] = GROUPS,
              **kw: Any) -> accesskit.Idp:
        idp = accesskit.start_idp(oidc_server_binary, tmp_path_factory.mktemp("idp"),
                                  users, groups, **kw)
        started.append(idp)
        return idp

    yield start
    for idp in started:
        accesskit.stop(idp.proc)


@pytest.fixture(scope="session")
def idp(start_idp: Callable[..., accesskit.Idp]) -> accesskit.Idp:
    return start_idp()


@pytest.fixture
def start_proxy(oauth2_proxy_binary: Path, tmp_path: Path
                ) -> Iterator[Callable[..., str]]:
    started: list[accesskit.Proxy] = []

    def start(args: list[str], env: dict[str, str] | None = None,
              port: int | None = None) -> str:
        proxy = accesskit.start_proxy(oauth2_proxy_binary, tmp_path / "proxy", args, env, port)
        started.append(proxy)
        return proxy.url

    yield start
    for proxy in started:
        accesskit.stop(proxy.proc)


@pytest.fixture
def upstream() -> Iterator[accesskit.Upstream]:
    server = accesskit.Upstream()
    yield server
    server.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = accesskit.browser_packages_missing()
    if missing:
        pytest.skip(reason=f"the browser tests need the Debian packages {' '.join(missing)} "
                           f"(as root: apt-get install {' '.join(missing)}, or "
                           f"`python3 tests/tools/install.py --only debian`)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = accesskit.browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--no-first-run", "--password-store=basic"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
