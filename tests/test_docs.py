"""The docs tell the truth about the code: every setting is in the configuration reference with
its default, every EDGECACHE_* variable they name exists, every metric the edge exposes is in the
operations page's table, every module is in the architecture picture, and every relative
link leads somewhere."""
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
OPERATIONS = (REPO_ROOT / "docs" / "operations.md").read_text()
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


def _exposed_metrics() -> set[str]:
    """Metric families the edge's code defines (proxy/ops/)."""
    names: set[str] = set()
    for module in (REPO_ROOT / "proxy" / "ops").glob("*.py"):
        names.update(re.findall(r'"(edgecache_[a-z_]+)"', module.read_text()))
    return names


def test_every_metric_is_in_the_operations_table() -> None:
    exposed = _exposed_metrics()
    assert {"edgecache_requests", "edgecache_store_damaged_blocks", "edgecache_policy_bytes"} <= exposed
    documented = set(re.findall(r"`(edgecache_[a-z_]+)`", OPERATIONS))
    for name in exposed:  # a counter is exposed with _total
        assert name in documented or f"{name}_total" in documented, f"{name} is not in docs/operations.md"


def test_every_module_is_in_the_architecture_picture() -> None:
    picture = (REPO_ROOT / "docs" / "architecture.md").read_text()
    modules = [m for m in (REPO_ROOT / "proxy").rglob("*.py") if m.name != "__init__.py"]
    assert len(modules) > 50
    for module in modules:
        assert re.search(rf"\b{re.escape(module.name)}\b", picture), f"{module.relative_to(REPO_ROOT)} is not in it"
