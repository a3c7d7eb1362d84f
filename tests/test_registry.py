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


def test_build_refuses_an_option_that_no_component_declares():
    """One config holds every component's options, so a prior ignores ``sigma`` (a
    likelihood's); a name no prior, likelihood or guide declares is a typo and is refused."""
    from pyrovae import build_estimator, build_prior

    assert build_prior("mixture", 2, components=3, sigma=0.1, flow_steps=2).components == 3
    with pytest.raises(ValueError, match="unknown prior option.s. componnets; known options: "
                                         ".*components"):
        build_prior("mixture", 2, componnets=3)
    with pytest.raises(ValueError, match="unknown estimator option.s. alpah"):
        build_estimator("renyi", 2, alpah=0.3)
