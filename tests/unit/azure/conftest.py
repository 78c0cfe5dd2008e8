from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fake_arm
import pytest


@pytest.fixture
def fake_azure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[fake_arm.FakeAzure]:
    gen = fake_arm.serve(tmp_path)
    fake = next(gen)
    # requests (under azure-core) trusts this bundle for every client, the way a
    # corporate proxy's CA is usually configured.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_file))
    yield fake
    gen.close()


@pytest.fixture
def credential() -> fake_arm.FakeCredential:
    return fake_arm.FakeCredential()
