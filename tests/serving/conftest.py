"""The service's ASGI app over the golden bundle, shared: BentoML registers its metrics once per process."""

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from serving.http_edge import MAX_BODY_ENV

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "sample" / "golden_bundle"


@pytest.fixture(scope="session")
def client():
    mp = pytest.MonkeyPatch()
    mp.setenv("PREALERT_BUNDLE", str(GOLDEN))
    mp.setenv(MAX_BODY_ENV, str(256 * 1024))
    mp.setenv("PREALERT_RELOAD_SECONDS", "0")  # the tests ask for reloads themselves
    from serving.service import PreAlert

    with TestClient(PreAlert.to_asgi(), raise_server_exceptions=False) as c:
        mp.undo()  # read at start-up; later tests (and the servers they start) must not inherit them
        yield c
