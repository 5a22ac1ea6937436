"""The option docs are generated from the option table: README.rst's table and --help
(issue 4, point 8)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.process import README

from gnetserver import docs
from gnetserver.options import DEFAULT_PORT, OPTIONS

pytestmark = pytest.mark.timeout(30)

VALUE = r"\[?VALUE\]?"  # the metavar, optional or not
FIX = "run `python -m gnetserver.docs --write` and commit README.rst"


def test_readme_option_table_is_current() -> None:
    """README.rst's table (between the markers) is exactly what the options table renders."""
    text = README.read_text(encoding="utf-8")
    try:
        current = docs.readme_table(text)
    except ValueError as exc:
        pytest.fail(f"{exc}; then {FIX}")
    if current != docs.render():
        pytest.fail(f"README.rst's option table differs from gnetserver/options.py: {FIX}")


def test_every_option_is_in_the_table() -> None:
    table = docs.render()
    for option in OPTIONS:
        row = f"   * - ``{option.name}``\n     - {docs.default_text(option)}\n"
        assert row in table, option.name


def test_code_only_options_say_so_in_the_table() -> None:
    """The options only code can give (``Option.cli`` False) end their meaning with the note;
    the others do not carry it."""
    flat = " ".join(docs.render().split())
    for option in OPTIONS:
        row = re.search(rf"\* - ``{re.escape(option.name)}`` - .*? - (.*?)(?= \* - ``|$)", flat)
        assert row, option.name
        assert row.group(1).endswith(docs.CODE_ONLY_NOTE) is (not option.cli), option.name


def test_rendered_table_is_valid_restructuredtext() -> None:
    core = pytest.importorskip("docutils.core")
    warnings = io.StringIO()
    core.publish_doctree(docs.render(), settings_overrides={
        "warning_stream": warnings, "report_level": 1, "halt_level": 5})
    assert warnings.getvalue() == ""


@pytest.mark.parametrize(("doc", "rst"), [
    ("Use `key value` lines", "Use ``key value`` lines"),
    ("a*b|c SSL_ d_e", "a\\*b\\|c SSL\\_ d_e"),
    ("spaced\n   out", "spaced out"),
])
def test_doc_text(doc: str, rst: str) -> None:
    assert docs.doc_text(doc) == rst


def test_write_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--write replaces only the region between the markers; --check then passes."""
    readme = tmp_path / "README.rst"
    readme.write_text(f"Title\n=====\n\n{docs.START}\n\nold table\n\n{docs.END}\n\nTail\n")
    assert docs.main(["--check", "--readme", str(readme)]) == 1
    assert "python -m gnetserver.docs --write" in capsys.readouterr().err
    assert docs.main(["--write", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"Title\n=====\n\n{docs.START}\n\n**")
    assert text.endswith(f"\n\n{docs.END}\n\nTail\n") and "old table" not in text
    assert docs.readme_table(text) == docs.render()
    assert docs.main(["--check", "--readme", str(readme)]) == 0
    assert docs.main(["--write", "--readme", str(readme)]) == 0
    assert readme.read_text() == text  # idempotent


def test_missing_markers_are_reported(tmp_path: Path) -> None:
    readme = tmp_path / "README.rst"
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="options-table-start"):
        docs.main(["--write", "--readme", str(readme)])


def test_module_prints_the_table() -> None:
    out = subprocess.run([sys.executable, "-m", "gnetserver.docs"], capture_output=True,
                         text=True, timeout=20, check=True).stdout
    assert out == docs.render()


def test_help_lists_every_option_with_default_and_doc() -> None:
    """`gnetserver --help`: one entry per option, with the first sentence of its doc and its
    default."""
    out = subprocess.run([sys.executable, "-m", "gnetserver", "--help"], capture_output=True,
                         text=True, timeout=20, check=True).stdout
    body = out.split("\n\n", 1)[1]  # after the usage paragraph, which names every flag too
    flat = " ".join(body.split())
    for option in OPTIONS:
        if not option.cli:
            continue
        found = re.search(rf"--{re.escape(option.name)} {VALUE} (.*?)(?= --\w+ {VALUE} |$)",
                          flat)
        assert found, f"--{option.name} missing from --help"
        entry = found.group(1)
        first_words = " ".join(option.doc.split()[:4])
        assert entry.startswith(first_words), (option.name, entry)
        assert "(default: " in entry, option.name


def test_help_usage_names_the_commands_own_flags() -> None:
    """The usage line of ``gnetserver --help`` shows ``--server`` and ``--monkey-patch`` (taken
    out of the words before the options are read), and the help describes them."""
    out = subprocess.run([sys.executable, "-m", "gnetserver", "--help"], capture_output=True,
                         text=True, timeout=20, check=True).stdout
    usage, body = out.split("\n\n", 1)
    flat_usage = " ".join(usage.split())
    assert flat_usage.startswith("usage: gnetserver [-h] [--server package.module:Class] "
                                 "[--monkey-patch] ")
    assert "--server package.module:Class" in body and "--monkey-patch" in body
    assert "--wsgi package.module:app" in body


def test_port_default_is_one_truth_in_readme_and_help() -> None:
    """README's table and --help show the same default for ``port``: DEFAULT_PORT."""
    port = next(option for option in OPTIONS if option.name == "port")
    assert docs.default_text(port) == f"``{DEFAULT_PORT}``"
    out = subprocess.run([sys.executable, "-m", "gnetserver", "--help"], capture_output=True,
                         text=True, timeout=20, check=True).stdout
    entry = re.search(r"--port VALUE (.*?)(?= --\w+ )", " ".join(out.split("\n\n", 1)[1].split()))
    assert entry and entry.group(1).endswith(f"(default: {DEFAULT_PORT})")
