# The gateway tests' world (acme's models on the fake upstream) serves the chat tests too.
import pytest  # noqa: E402

from tests.ai.conftest import world  # noqa: F401


@pytest.fixture(autouse=True)
async def close_upstream_session():
    """Each async test runs its own loop; close the gateway's client session on it."""
    yield
    from ai.gateway.upstream import close_session

    await close_session()
