from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import LiveService, live_service


@pytest.fixture(scope="package")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """One live embedded-mode service for all client, CLI and example tests."""
    with live_service(tmp_path_factory.mktemp("service")) as live:
        yield live
