"""docs/COMPONENTS.md is generated from the code (fleet/components_doc.py): it fails here when stale."""

from __future__ import annotations

from config_server.declarations import Library
from fleet import components_doc


def test_components_md_is_current() -> None:
    text = components_doc.render(Library(components_doc.REPO))
    assert components_doc.DOC.read_text() == text, "docs/COMPONENTS.md is stale: run python -m fleet.components_doc"


def test_every_component_is_listed_with_its_heap() -> None:
    lib = Library(components_doc.REPO)
    found = {e.package for e in components_doc.entries(lib)}
    assert len(found) == 16
    doc = components_doc.DOC.read_text()
    for line in doc.splitlines():
        if line.startswith("| `."):
            assert not line.rstrip().endswith("| — |"), f"no heap figure: {line[:60]}"  # bench/components_heap.py
