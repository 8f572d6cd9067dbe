"""Registries: lookups, loud failures, gin registration under the kind."""
import gin
import pytest

from rae.registry import REGISTRIES, Registry, RegistryError


def test_every_kind_has_a_registry():
    expected = {"encoder", "decoder", "autoencoder", "backbone", "path", "time_schedule",
                "sampler", "guidance", "loss", "dataset", "experiment", "tracker"}
    assert expected <= set(REGISTRIES)


def test_register_also_registers_with_gin_under_the_kind():
    reg = Registry("testkind_a")

    @reg.register("widget")
    def widget(size: int = 1):
        return ("widget", size)

    gin.clear_config()
    gin.parse_config("testkind_a.widget.size = 5")
    built = gin.get_configurable("testkind_a.widget")()
    assert built == ("widget", 5)
    assert reg.get("widget") is widget
    assert widget(size=2) == ("widget", 2)  # the registered object itself is unchanged
    gin.clear_config()


def test_unknown_name_names_kind_and_closest():
    reg = Registry("testkind_b")
    # names no real plugin has: gin's registry is global and a short name must stay unambiguous
    reg.register("dinov2_test")(lambda: None)
    reg.register("siglip2_test")(lambda: None)
    with pytest.raises(RegistryError) as err:
        reg.get("dinov3_test")
    assert "testkind_b" in str(err.value) and "'dinov3_test'" in str(err.value)
    assert "did you mean 'dinov2_test'" in str(err.value)


def test_duplicate_registration_of_a_different_object_fails():
    reg = Registry("testkind_c")

    def first():
        return 1

    reg.register("x")(first)
    reg.register("x")(first)  # the same object again (a re-import) is fine
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("x")(lambda: 2)


def test_describe_lists_parameters_with_defaults():
    reg = Registry("testkind_d")

    @reg.register("thing")
    class Thing:
        def __init__(self, width: int, depth: int = 3):
            pass

    assert reg.describe("thing") == [("width", "REQUIRED"), ("depth", "3")]
