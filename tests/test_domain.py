"""The error tree drawn in server.domain's docstring is the real one: names, parents, statuses and codes."""

from __future__ import annotations

import re

from server import domain


def test_the_documented_error_tree_matches_the_classes() -> None:
    assert domain.__doc__ is not None
    entries = re.findall(r"^(\s*(?:[│ ]*[├└]── )?)(\w+) \((\d{3}) (\w+)\)$", domain.__doc__, re.MULTILINE)
    assert entries, "no tree found in the docstring"
    parents: list[tuple[int, type[domain.MixauthError]]] = []
    documented = set()
    for indent, name, status, code in entries:
        cls = getattr(domain, name)
        depth = len(indent)
        while parents and parents[-1][0] >= depth:
            parents.pop()
        if parents:
            assert cls.__bases__ == (parents[-1][1],), name
        assert (cls.status, cls.code) == (int(status), code), name
        parents.append((depth, cls))
        documented.add(cls)
    defined = {
        value for value in vars(domain).values() if isinstance(value, type) and issubclass(value, domain.MixauthError)
    }
    assert documented == defined


def test_codes_are_unique_and_snake_case() -> None:
    classes = [
        value for value in vars(domain).values() if isinstance(value, type) and issubclass(value, domain.MixauthError)
    ]
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    assert all(re.fullmatch(r"[a-z0-9_]+", code) for code in codes)
