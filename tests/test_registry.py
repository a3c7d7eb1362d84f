import pytest

from pyrovae.components.registry import Registry


def test_register_get_and_names():
    registry = Registry("widget")
    registry.register("b", 2)

    @registry.register("a")
    def a():
        return 1

    assert registry.get("a") is a and registry.get("b") == 2
    assert registry.names() == ["a", "b"] and "a" in registry and len(registry) == 2


def test_registering_twice_raises():
    registry = Registry("widget")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.register("a", 2)
    assert registry.get("a") == 1


def test_unknown_name_lists_known_ones():
    registry = Registry("widget")
    registry.register("a", 1)
    registry.register("b", 2)
    with pytest.raises(ValueError, match=r"unknown widget 'c'; known: a, b"):
        registry.get("c")
    assert registry.unregister("a") == 1 and registry.names() == ["b"]
