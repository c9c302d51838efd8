"""The exported JSON Schema: fresh, a valid 2020-12 schema, and accepting every shipped spec."""

import json
import os
from pathlib import Path

import pytest
import yaml

from kdgraph.spec import load_spec
from kdgraph.spec.jsonschema import SCHEMA_FILE, spec_json_schema

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").rglob("*.yaml"))
SCHEMA_LINE = "# yaml-language-server: $schema="


@pytest.fixture(scope="module")
def validator():
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_shipped_schema_file_is_fresh():
    shipped = json.loads((ROOT / SCHEMA_FILE).read_text())
    assert shipped == spec_json_schema(), (
        f"{SCHEMA_FILE} is stale: regenerate it with `kdgraph schema --out {SCHEMA_FILE}`")


def test_schema_has_dialect_and_title():
    schema = spec_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "kdgraph spec"
    assert schema["required"] == ["student"]


@pytest.mark.parametrize("path", SPECS, ids=[str(p.relative_to(ROOT)) for p in SPECS])
def test_shipped_spec_validates_against_schema(path, validator):
    doc = yaml.safe_load(path.read_text())
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    load_spec(path)  # and pydantic agrees


@pytest.mark.parametrize("path", SPECS, ids=[str(p.relative_to(ROOT)) for p in SPECS])
def test_shipped_spec_points_at_the_schema(path):
    first = path.read_text().splitlines()[0]
    expected = Path(os.path.relpath(ROOT / SCHEMA_FILE, path.parent)).as_posix()
    assert first == SCHEMA_LINE + expected, f"first line of {path.name} should be: {SCHEMA_LINE}{expected}"


def test_short_forms_and_typos(validator):
    ok = {"student": {"model": "timm:resnet18"}, "teacher": {"model": "timm:resnet34"},
          "distill": {"pairs": [{"teacher": "layer1", "student": "layer1", "loss": "mse"},
                                {"teacher": "layer2", "student": "layer2", "loss": {"name": "logsum", "alpha": 2}}]},
          "output": "runs/x"}
    assert validator.is_valid(ok)
    assert validator.is_valid(dict(ok, output={"dir": "runs/x", "keep": 3}))
    assert not validator.is_valid(dict(ok, trian={"epochs": 1}))
    assert not validator.is_valid({"teacher": {"model": "timm:resnet34"}})
    assert not validator.is_valid(dict(ok, train={"optimizer": {"name": "lamb"}}))
    assert not validator.is_valid(dict(ok, train={"epochs": 0}))


def test_spec_reference_doc_is_generated_and_current():
    from pathlib import Path

    from kdgraph.spec.reference import spec_reference

    doc = Path(__file__).resolve().parents[2] / "docs" / "spec_reference.md"
    assert doc.read_text() == spec_reference(), "regenerate with: kdgraph schema --markdown --out docs/spec_reference.md"
    for key in ("`student.model`", "`train.stages[].reset_optimizer`", "`self_distill.alpha`", "`output.keep`"):
        assert key in doc.read_text(), key
    rows = [line.split(" | ") for line in doc.read_text().splitlines() if line.startswith("| `")]
    assert all(row[1].strip() and not row[1].strip().startswith("\\|") for row in rows), "a key without a type"
    assert "| `data.image_size` | int (> 0) \\| null |" in doc.read_text()  # PositiveInt: the type and its bound
