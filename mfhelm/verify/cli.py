"""The `mfhelm verify` command (and `mfhelm install --verify`) behind mfhelm.cli:
every argument checked before the cluster is asked anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DEFAULT_TIMEOUT = "15m"


def check_arguments(*, timeout: str, config_profile: str | None) -> Any:
    """--timeout, --config-profile and the Metaflow config it names, refused in
    one line before the cluster is asked anything (for `install --verify`,
    before anything is installed); returns the config file to use."""
    from mfhelm.settings import check_timeout
    from mfhelm.verify.core import config_file, load_config

    check_timeout(timeout)
    path = config_file(config_profile)
    load_config(path)
    return path


def verify(target: Any, *, local: bool, config_profile: str | None, timeout: str,
           keep: bool, echo: Callable[[str], None], warn: Callable[[str], None]) -> None:
    from mfhelm.verify import core

    path = check_arguments(timeout=timeout, config_profile=config_profile)
    core.verify(target, config_path=path, local=local, timeout=timeout, keep=keep,
                echo=echo, warn=warn)
