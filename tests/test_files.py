"""Prompt files read with errors that teach; result files valid JSON whatever the numbers, written whole or not at
all."""

import json
import math

import pytest

from dsas_core import DsasError
from dsas_core.files import prompt_lines, read_text, write_json


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


def test_prompt_files_that_are_missing_a_folder_or_not_utf8_raise_errors_naming_the_file_and_the_fix(tmp_path):
    with pytest.raises(DsasError, match=r"source file '.*nope.txt' not found: give a text file with one prompt per line"):
        read_text(tmp_path / "nope.txt", "source")
    with pytest.raises(DsasError, match=r"prompt file '.*' is a folder: give a text file in it, with one prompt"):
        read_text(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("un caf\xe9\n".encode("latin-1"))
    with pytest.raises(DsasError, match=r"'.*latin1.txt' is not UTF-8 text \(byte 6\): save it as UTF-8, with one text"):
        read_text(tmp_path / "latin1.txt", expected="one text per line")
    (tmp_path / "p.txt").write_text("# comment\n\n  a café \n\t#x\nb\n", encoding="utf-8")
    assert prompt_lines(read_text(tmp_path / "p.txt")) == ["a café", "b"]
