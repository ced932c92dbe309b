"""The suite stands on its own: a user's clone has nothing beside it (issue 11, item 16)."""

import re
from pathlib import Path

from tests import openai_schema

ROOT = Path(__file__).resolve().parents[1]
# A path that climbs out of the repository to the team's shared folder (spelt in
# pieces so that this file does not match itself).
SHARED = "sha" + "red"
OUTSIDE = re.compile(rf"\.\./{SHARED}|/{SHARED}/reference|parents\[\d\]\s*/\s*\"{SHARED}\"")


def test_it_validates_against_a_spec_kept_inside_the_repository():
    spec = openai_schema.SPEC_PATH.resolve()

    assert spec.is_relative_to(ROOT)
    assert spec.is_file()
    assert (spec.parent / "openai-openapi.LICENSE").read_text().startswith("The MIT License")


def test_no_project_file_reads_outside_the_repository():
    files = [ROOT / "Makefile", ROOT / "pyproject.toml", *ROOT.glob(".ci/*")]
    for folder in ("accounts", "ai", "orgs", "panel", "tests", "docker"):
        files += (ROOT / folder).rglob("*.py")
    offenders = [
        str(path.relative_to(ROOT))
        for path in files
        if path.is_file() and OUTSIDE.search(path.read_text())
    ]

    assert offenders == []
