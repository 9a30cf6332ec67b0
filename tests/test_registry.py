"""The one registry type: duplicates refused, unknown names listed, packages discovered."""

from __future__ import annotations

import pytest

from permerge.errors import ModelError, PermergeError
from permerge.registry import Registry


def _one() -> int:
    """First entry."""
    return 1


def _two() -> int:
    return 2


def test_a_second_entry_under_a_taken_name_is_refused_on_one_line() -> None:
    r: Registry[object] = Registry("widget")
    r.add("a", _one)
    with pytest.raises(PermergeError, match="widget 'a' is registered twice") as e:
        r.add("a", _two)
    assert "\n" not in str(e.value)
    assert r.get("a") is _one


def test_re_adding_from_the_same_origin_replaces_the_entry() -> None:
    """A module re-imported (importlib.reload) registers the same names again."""
    r: Registry[object] = Registry("widget")
    r.add("a", _one)
    r.add("a", _one)
    assert r.names() == ["a"]


def test_an_unknown_name_lists_the_known_ones_with_the_registry_s_error() -> None:
    r: Registry[object] = Registry("model", error=ModelError)
    r.register("b")(_two)
    r.register("a")(_one)
    with pytest.raises(ModelError, match="unknown model 'c'; known: a, b"):
        r.get("c")
    assert r.summaries() == {"a": "First entry.", "b": ""}
    assert list(r) == ["a", "b"] and len(r) == 2 and "a" in r


def test_a_package_s_modules_are_imported_on_first_lookup() -> None:
    from permerge.reduce.registry import METHODS

    assert METHODS.package == "permerge.reduce.methods"
    assert {"random", "herding", "kcenter", "el2n", "uncertainty", "dc", "dsa", "dm", "mtt"} <= set(METHODS.names())


def test_dsa_options_extend_dc_s() -> None:
    from permerge.reduce.methods.dc import DCOptions
    from permerge.reduce.methods.dsa import DSAOptions

    assert issubclass(DSAOptions, DCOptions)
    assert set(DSAOptions.model_fields) == set(DCOptions.model_fields) | {"flip"}
