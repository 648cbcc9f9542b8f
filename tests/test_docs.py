"""The docs tell the truth about the code: every setting is in the configuration reference with
its default, every EDGECACHE_* variable they name exists, and every relative link leads somewhere."""
from __future__ import annotations

import dataclasses
import re
import tomllib

import pytest

from proxy.config import ENV_PREFIX, Settings
from tests.conftest import REPO_ROOT

DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
PAGES = [REPO_ROOT / "README.md", *DOCS]
REFERENCE = (REPO_ROOT / "docs" / "configuration.md").read_text()
EXAMPLE = tomllib.loads((REPO_ROOT / "config" / "edgecache.example.toml").read_text())


def _shown(value: object) -> str:
    """A default as the reference shows it."""
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return '""'
    return str(value)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Settings)])
def test_every_setting_is_in_the_reference_with_its_default(name: str) -> None:
    rows = [line for line in REFERENCE.splitlines() if line.startswith("| `") and f"`{name}`" in line.split("|")[1]]
    assert rows, f"{name} is not in docs/configuration.md"
    default = rows[0].split("|")[3].strip().strip("`")
    assert default == _shown(EXAMPLE[name]), f"{name}: the reference says {default}, the example {EXAMPLE[name]!r}"


MISSPELLED = {"EDGECACHE_WORKER"}  # what the start-up example shows being warned about, on purpose


def test_every_variable_the_docs_name_is_a_setting() -> None:
    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)} | {ENV_PREFIX + "CONFIG"}
    for page in PAGES:
        named = set(re.findall(r"EDGECACHE_[A-Z0-9_]*[A-Z0-9]", page.read_text())) - MISSPELLED
        assert named <= known, f"{page.name}: {sorted(named - known)}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_leads_somewhere(page) -> None:  # type: ignore[no-untyped-def]
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
        if not target.startswith(("http://", "https://", "mailto:")):
            assert (page.parent / target).exists(), f"{page.name} links to {target}"
