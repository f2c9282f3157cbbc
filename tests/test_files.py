"""Result files: valid JSON whatever the numbers, written whole or not at all."""

import json
import math

import pytest

from dsas_core.files import write_json


def test_nan_and_infinities_are_written_as_null_and_the_file_is_strict_json(tmp_path):
    path = write_json(tmp_path / "r.json", {"a": math.nan, "b": [1.5, math.inf, -math.inf], "c": {"d": (2, math.nan)}})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "a": None, "b": [1.5, None, None], "c": {"d": [2, None]}}


def test_a_failed_write_leaves_the_previous_file_and_no_temporary_file(tmp_path):
    path = write_json(tmp_path / "r.json", {"kept": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"kept": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
