"""Tree propagation inside a datacenter (§0154)."""

from __future__ import annotations

import pytest

from scaledist.core.tree import Tree

SIZES = {"a": 700, "b": 600, "c": 500, "d": 400, "e": 300, "f": 200, "g": 100, "h": 0}


def test_root_holds_the_most_and_parents_hold_more_than_children() -> None:
    t = Tree(SIZES, fanout=2)
    assert t.order == ("a", "b", "c", "d", "e", "f", "g", "h")
    for s in t.order[1:]:
        p = t.parent(s)
        assert p is not None and SIZES[p] >= SIZES[s]
    assert t.parent("a") is None
    assert [t.parent(s) for s in "bcdefgh"] == ["a", "a", "b", "b", "c", "c", "d"]
    assert t.children("b") == ("d", "e")


def test_levels_of_a_binary_tree() -> None:
    t = Tree(SIZES, fanout=2)
    assert [t.level(n) for n in range(4)] == [("a",), ("b", "c"), ("d", "e", "f", "g"), ("h",)]
    assert t.level(4) == ()
    assert t.level_of("f") == 2 and t.level_of("zz") is None


def test_tree_sources_parent_then_level_peers() -> None:
    t = Tree(SIZES, fanout=2)
    assert t.tree_sources("a") == ()
    assert t.tree_sources("b") == ("a", "c")
    assert t.tree_sources("e") == ("b", "d", "f", "g")
    assert t.tree_sources("e", max_peers=1) == ("b", "d")
    assert t.tree_sources("d", max_peers=2) == ("b", "e", "f")
    assert t.tree_sources("h") == ("d",)  # alone on its level
    assert t.tree_sources("unknown") == ()


def test_ties_by_slave_id_and_fanout() -> None:
    t = Tree({"s3": 5, "s1": 5, "s2": 5, "s0": 9}, fanout=3)
    assert t.order == ("s0", "s1", "s2", "s3")
    assert {t.parent(s) for s in ("s1", "s2", "s3")} == {"s0"}
    assert t.tree_sources("s2") == ("s0", "s1", "s3")


def test_chain_with_fanout_one() -> None:
    t = Tree({"x": 3, "y": 2, "z": 1}, fanout=1)
    assert t.tree_sources("z") == ("y",)
    assert t.parent("y") == "x"


def test_empty_and_bad_fanout() -> None:
    assert len(Tree({})) == 0
    with pytest.raises(ValueError):
        Tree(SIZES, fanout=0)


def test_rebuild_follows_new_sizes() -> None:
    """The master rebuilds periodically: a slave that caught up moves toward the root."""
    before = Tree(SIZES)
    after = Tree({**SIZES, "h": 10_000})
    assert before.order[-1] == "h" and after.order[0] == "h"
    assert after.parent("a") == "h"
