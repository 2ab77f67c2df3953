"""Secrets come from an environment variable or a file named in the config, never from the config itself."""

from __future__ import annotations

import os
from pathlib import Path

from scheduler.errors import ProviderError


def secret(env_name: str, file_name: str, what: str) -> str:
    if env_name:
        value = os.environ.get(env_name, "")
        if value:
            return value.strip()
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ProviderError(f"{what}: cannot read credential file {file_name}: {exc.strerror}") from None
    raise ProviderError(f"{what}: no credential: set ${env_name or '...'} or token_file in the config")
