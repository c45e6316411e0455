"""Unit tests run in a working directory of their own.

Some build ``Settings()`` with its defaults and bootstrap them: the API key store then
lands in the default data directory, ``./data``, which must not be the checkout's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _working_directory_of_their_own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(before)
