"""scripts/build-base-image.sh takes its Debian mirror from the host's apt sources; none lives in the repository."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-base-image.sh"


def mirror(etc: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "IMQD_DEBIAN_MIRROR"}
    return subprocess.run(["sh", str(SCRIPT), "--print-mirror"], env={**clean, "IMQD_APT_ETC": str(etc), **env},
                          capture_output=True, text=True, timeout=30)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_deb822_sources_give_the_first_enabled_release_source(tmp_path: Path) -> None:
    write(tmp_path / "sources.list.d" / "a-security.sources",
          "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n")
    write(tmp_path / "sources.list.d" / "debian.sources", "\n".join([
        "# a disabled one first", "Types: deb", "URIs: http://disabled.example/debian", "Suites: bookworm",
        "Enabled: no", "",
        "Types: deb-src", "URIs: http://src.example/debian", "Suites: bookworm", "",
        "types: deb deb-src", "# http://snapshot.example/archive", "uris: http://mirror.example/debian",
        "suites: bookworm bookworm-updates", "components: main", "",
        "Types: deb", "URIs: http://later.example/debian", "Suites: bookworm", ""]))
    write(tmp_path / "sources.list.d" / "other.sources.disabled", "Types: deb\nURIs: http://x.example/\nSuites: a\n")
    res = mirror(tmp_path)
    assert (res.returncode, res.stdout, res.stderr) == (0, "http://mirror.example/debian\n", "")


def test_one_line_sources_list_when_there_is_no_deb822(tmp_path: Path) -> None:
    write(tmp_path / "sources.list", "\n".join([
        "# deb http://commented.example/debian bookworm main",
        "deb-src http://src.example/debian bookworm main",
        "deb http://mirror.example/debian-security bookworm-security main",
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.example/debian bookworm main",
        ""]))
    assert mirror(tmp_path).stdout == "http://mirror.example/debian\n"


def test_the_environment_overrides_and_nothing_found_is_one_clear_line(tmp_path: Path) -> None:
    write(tmp_path / "sources.list", "deb http://mirror.example/debian bookworm main\n")
    assert mirror(tmp_path, IMQD_DEBIAN_MIRROR="http://override.example/debian").stdout == \
        "http://override.example/debian\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    res = mirror(empty)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith("build-base-image: no Debian source in") and "IMQD_DEBIAN_MIRROR" in res.stderr


@pytest.mark.skipif(not Path("/etc/apt").is_dir(), reason="not a Debian-like host")
def test_this_host_gives_a_mirror() -> None:
    res = mirror(Path("/etc/apt"))
    assert res.returncode == 0 and re.fullmatch(r"(https?|file|ftp)://\S+\n", res.stdout), res


def test_no_mirror_url_is_written_into_the_script() -> None:
    assert not re.search(r"\b(https?|ftp)://", SCRIPT.read_text()), "take the mirror from the host's apt sources"
