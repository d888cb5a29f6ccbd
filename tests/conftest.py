import pytest

from embedplug import registry


@pytest.fixture
def fresh_registry(monkeypatch):
    """An unloaded process-wide plugin registry, no plugin switches set, and a clean one afterwards."""
    monkeypatch.delenv(registry.STRICT_ENV, raising=False)
    monkeypatch.delenv(registry.DISABLE_ENV, raising=False)
    registry.reset_registry()
    yield registry.get_registry()
    registry.reset_registry()
