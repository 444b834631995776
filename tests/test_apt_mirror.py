"""The container test takes debootstrap's Debian mirror from apt's own sources, in both of apt's formats."""

from __future__ import annotations

from pathlib import Path

from tests.container import apt_mirror


def test_the_mirror_comes_from_a_deb822_sources_file(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.test/security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    assert apt_mirror(sources=[tmp_path / "sources.list", tmp_path]) == "http://mirror.test/debian"


def test_the_mirror_comes_from_a_one_line_sources_list(tmp_path: Path) -> None:
    sources = tmp_path / "sources.list"
    sources.write_text(
        "# deb http://commented.test/debian bookworm main\n"
        "deb-src http://source.test/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.test/debian bookworm main contrib\n"
    )
    assert apt_mirror(sources=[sources]) == "http://mirror.test/debian"


def test_a_disabled_or_other_suite_is_not_taken(tmp_path: Path) -> None:
    (tmp_path / "a.sources").write_text(
        "Types: deb\nURIs: http://off.test/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n"
    )
    (tmp_path / "b.list").write_text("deb http://other.test/debian trixie main\n")
    assert apt_mirror(sources=[tmp_path]) is None
