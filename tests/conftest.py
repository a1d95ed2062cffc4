import pytest

from tests.support import Backend


@pytest.fixture
def backend():
    app = Backend()
    yield app
    app.close()
