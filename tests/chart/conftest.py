import pytest
from chartlib import helm


def pytest_collection_modifyitems(config, items):
    if helm():
        return
    skip = pytest.mark.skip(reason="helm not installed (run `make dev`; tools.toml pins it)")
    for item in items:
        if "tests/chart" in str(item.fspath):
            item.add_marker(skip)
