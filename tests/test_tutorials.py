"""The tutorials of `examples/`: keras.io's format, README links, and their smoke runs.

keras.io turns a tutorial `.py` into a notebook with its `tutobooks` script: a header block,
then top-level `\"\"\"` blocks of markdown between code. `check_tutobook` applies the same rules
(the script's own validation, and how it splits cells), so a file that passes renders without
edits. The smoke runs of the folder and serving tutorials live in their own test modules.
"""

import ast
import os
import re
import subprocess
import sys

import pytest
from tutorials import EXAMPLES, ROOT, run_tutorial

HEADER_FIELDS = (
    "Title",
    "Author",
    "Date created",
    "Last modified",
    "Description",
    "Accelerator",
)
DATE = re.compile(r"\d{4}/\d{2}/\d{2}$")


def tutorial_names():
    """The files of `examples/` that open with a keras.io header."""
    names = []
    for name in sorted(os.listdir(EXAMPLES)):
        if name.endswith(".py"):
            with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
                head = f.read(20)
            if head.startswith('"""\nTitle: '):
                names.append(name)
    return names


def _header(lines):
    fields = {}
    for line, field in zip(lines[1:7], HEADER_FIELDS):
        key = "Authors" if field == "Author" and line.startswith("Authors: ") else field
        assert line.startswith(key + ": "), f"header line {line!r} should be `{field}: ...`"
        fields[field] = line[len(key) + 2 :]
    assert lines[7] == '"""', "the header block closes after `Accelerator:`"
    return fields


def _cells(lines):
    """(kind, text) cells split as tutobooks splits them, after the header."""
    cells, i = [], 8
    while i < len(lines):
        if lines[i].startswith('"""'):
            tag = lines[i][3:]
            assert tag in ("", "shell", "invisible"), f"unknown cell tag {tag!r}"
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith('"""'))
            cells.append(("markdown", "\n".join(lines[i + 1 : end])))
            i = end + 1
        else:
            end = next((j for j in range(i, len(lines)) if lines[j].startswith('"""')), len(lines))
            code = "\n".join(lines[i:end]).strip()
            if code:
                cells.append(("code", code))
            i = end
    return cells


def check_tutobook(name, folder=EXAMPLES):
    """Asserts keras.io's rules for `<folder>/<name>`; returns (header fields, cells)."""
    path = os.path.join(folder, name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ast.parse(text)
    lines = text.split("\n")
    assert lines[0] == '"""'
    fields = _header(lines)
    description = fields["Description"]
    assert description[:1].isupper() and description.endswith("."), description
    assert len(description) < 100, f"Description is {len(description)} characters"
    assert DATE.match(fields["Date created"]) and DATE.match(fields["Last modified"])
    assert fields["Accelerator"] in ("GPU", "TPU", "None")
    for number, line in enumerate(lines, 1):
        assert not line.endswith(" "), f"{name}:{number}: trailing space"
        is_fence_line = line.startswith('"""') and line.endswith('"""') and len(line) > 3
        assert not is_fence_line, f'{name}:{number}: single-line `"""` block'
    cells = _cells(lines)
    sections = [text for kind, text in cells if kind == "markdown" and text.startswith("## ")]
    assert len(sections) >= 4, f"{name} has {len(sections)} `## ` sections"
    assert sum(kind == "code" for kind, _ in cells) >= 4
    return fields, cells


def test_there_are_five_tutorials():
    assert len(tutorial_names()) == 5, tutorial_names()


@pytest.mark.parametrize("name", tutorial_names())
def test_tutorial_renders_as_a_keras_io_tutobook(name):
    _, cells = check_tutobook(name)
    # The first text block says how to run the full tutorial and how long it takes.
    kind, intro = cells[0]
    assert kind == "markdown"
    assert f"python examples/{name}" in intro, "the full run's command"
    assert re.search(r"\d+ (minutes|hours)", intro), "how long the full run takes"
    # tutobooks checks black's formatting; ruff's formatter is black's style at 88 columns.
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ruff"), "format", "--diff", name],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_tutobook_refuses_what_keras_io_refuses(tmp_path):
    good = os.path.join(EXAMPLES, tutorial_names()[0])
    with open(good, encoding="utf-8") as f:
        text = f.read()
    broken = {
        "missing field": text.replace("Accelerator: ", "Hardware: ", 1),
        "description": re.sub(r"Description: (.*)\.\n", r"Description: \1\n", text, count=1),
        "one-line block": text + '\n"""## A one-line block"""\n',
        "trailing space": re.sub(r"\n(import \w+)\n", r"\n\1  \n", text, count=1),
    }
    for case, content in broken.items():
        (tmp_path / "t.py").write_text(content, encoding="utf-8")
        with pytest.raises(AssertionError):
            check_tutobook("t.py", folder=str(tmp_path))
            pytest.fail(f"{case} passed")


def test_readme_links_every_tutorial():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for name in tutorial_names():
        assert f"(examples/{name})" in readme, f"README does not link examples/{name}"


@pytest.mark.parametrize("name", ["oxford_pets_segmentation.py", "pretrain_then_transfer.py"])
def test_tfds_tutorial_smoke_run(name, tmp_path):
    result = run_tutorial(name, tmp_path)
    assert "mIoU" in result.stdout
    assert any(file.endswith(".png") for file in os.listdir(tmp_path)), os.listdir(tmp_path)
