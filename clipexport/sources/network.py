"""Offline, said fast and once. The hub libraries retry a dead network for a minute and print a
page of warnings; one short TCP probe decides instead, and when it fails the libraries are put
in their offline mode, so a cached file still loads and a missing one fails at once."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
_OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def prepare_for_downloads() -> bool:
    """Before loading something that may download: True when the hub can be reached; otherwise
    switch the hub libraries to offline mode (cache only) and return False."""
    if hub_reachable():
        return True
    for flag in _OFFLINE_FLAGS:
        os.environ[flag] = "1"
    try:  # already imported: its constants were read at import time
        import huggingface_hub.constants as constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    return False
