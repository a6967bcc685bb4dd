"""The compiled extension's build name: one per source, flags, torch and Python version (issue 21, item 9)."""

from __future__ import annotations

from involution.ops.backends.cpu import extension_name


def test_build_name_changes_with_everything_the_library_depends_on() -> None:
    base = extension_name(b"int f();", ["-O3"], "2.14.1")
    assert base == extension_name(b"int f();", ["-O3"], "2.14.1")
    assert base.startswith("involution_cpu_") and len(base) == len("involution_cpu_") + 12
    others = {
        extension_name(b"int g();", ["-O3"], "2.14.1"),
        extension_name(b"int f();", ["-O3", "-mavx2"], "2.14.1"),
        extension_name(b"int f();", ["-O3"], "2.13.0"),
        extension_name(b"int f();-O3", [], "2.14.1"),  # parts are length-prefixed: no ambiguity in concatenation
    }
    assert base not in others and len(others) == 4
