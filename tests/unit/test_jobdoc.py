"""The job file's documentation comes from the spec: every field described, docs/job-reference.md
equal to what `python -m launcher.jobdoc` writes, and the starter of `launcher init` a valid job
holding launcher.jobdoc.STARTER, commented from the same descriptions."""
from __future__ import annotations

import yaml

from launcher.jobdoc import REFERENCE_PATH, STARTER, fields, render_reference, render_starter
from launcher.spec import build_job


def test_every_field_has_a_description():
    missing = [path for path, info in fields() if not (info.description or "").strip()]
    assert not missing, f"give these fields a description= in launcher/spec.py: {missing}"


def test_the_reference_is_what_the_spec_generates():
    assert REFERENCE_PATH.read_text() == render_reference(), (
        "docs/job-reference.md drifted from launcher/spec.py: regenerate with `python -m launcher.jobdoc`")
    text = REFERENCE_PATH.read_text()
    for path, info in fields():
        assert f"| `{path}` |" in text, path


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and f"{prefix}{k}" != "train.lora":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_the_starter_is_a_valid_job_commented_from_the_spec():
    text = render_starter("my.yaml")
    data = yaml.safe_load(text)
    assert data == STARTER
    job = build_job(data, "starter").to_dict()
    flat = _flatten(job)
    for path, value in _flatten(STARTER).items():
        assert flat[path] == value, path
    described = {path: info.description for path, info in fields()}
    for path in _flatten(STARTER):
        first_words = " ".join(described[path].split()[:4])
        assert first_words in text, f"{path}: its description is not in the starter"
    assert "launcher plan my.yaml" in text and "time: \"04:00:00\"" in text
    assert max(len(line) for line in text.splitlines()) <= 120
