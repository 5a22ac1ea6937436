"""README.rst's option table, rendered from :data:`gnetserver.options.OPTIONS`, and its
metric list, rendered from :data:`gnetserver.metric_names.METRICS`.

Usage::

    python -m gnetserver.docs            # print the table (reStructuredText)
    python -m gnetserver.docs --write    # rewrite README.rst between the markers
    python -m gnetserver.docs --check    # exit 1 when README.rst's table is stale
    python -m gnetserver.docs --metrics  # print the metric list

Rules of this module:

* The table is derived from the option table only (name, default, doc, section), one
  ``list-table`` per section in the order the sections first appear. Nothing here lists options.
* README.rst holds the rendered table between the lines :data:`START` and :data:`END`;
  ``tests/unit/test_docs.py`` fails when the two disagree.
* A doc's `single backquoted` words become ``inline literals``; characters that would start
  other inline markup are escaped, so any doc renders as plain text.
* Defaults are shown as ``--help`` shows them (:func:`gnetserver.options.default_text`, one
  truth): ``Option.shown_default`` when the stored default is not what a user sees (``port``:
  20203; ``listen``: SOMAXCONN by name, so that the README does not change from one machine
  to the next).
* The metric list (README's "Monitoring") sits between :data:`METRICS_START` and
  :data:`METRICS_END`, rendered by :func:`render_metrics`; ``--write`` and ``--check`` handle
  both regions.
* An option only code can give (``Option.cli`` False) says so at the end of its meaning
  (:data:`CODE_ONLY_NOTE`).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import options as _options
from .metric_names import METRICS, MetricSpec
from .options import HTTP_OPTIONS, OPTIONS, Option

START = ".. options-table-start"
END = ".. options-table-end"
METRICS_START = ".. metrics-table-start"
METRICS_END = ".. metrics-table-end"

#: README.rst of the source tree this module belongs to.
README = Path(__file__).resolve().parent.parent / "README.rst"

#: Appended to the meaning of the options that only code can give (``Option.cli`` False).
CODE_ONLY_NOTE = "Code only: not accepted on the command line or in a conf file."

_WIDTH = 96
_INDENT = "       "


def default_text(option: Option) -> str:
    """The default of an option as README shows it: ``none``, ``on``/``off``, or the value
    as an inline literal; the text is :func:`gnetserver.options.default_text`'s."""
    text = _options.default_text(option)
    value = option.default
    plain = value is None or value == "" or value == [] or isinstance(value, bool)
    return text if plain and option.shown_default is None else f"``{text}``"


def doc_text(doc: str) -> str:
    """A doc string as reStructuredText: `x` -> ``x``, other markup characters escaped."""
    parts = re.split(r"`([^`]+)`", " ".join(doc.split()))
    out = []
    for index, part in enumerate(parts):
        if index % 2:
            out.append(f"``{part}``")
        else:
            part = part.replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|")
            out.append(re.sub(r"(?<=\w)_(?=\W|$)", r"\\_", part))
    return "".join(out)


def _cell(first: str, text: str) -> list[str]:
    """One list-table cell: ``first`` is the bullet prefix, continuation lines are indented."""
    lines = textwrap.wrap(text, _WIDTH - len(_INDENT), break_long_words=False,
                          break_on_hyphens=False) or [""]
    return [first + lines[0], *(_INDENT + line for line in lines[1:])]


def render(options: Sequence[Option] = (*OPTIONS, *HTTP_OPTIONS)) -> str:
    """The option tables, one per section, as reStructuredText (ends with a newline): the
    base server's, then the HTTP personality's (GHTTPServer)."""
    sections: dict[str, list[Option]] = {}
    for option in options:
        sections.setdefault(option.section, []).append(option)
    blocks = []
    for section, members in sections.items():
        lines = [f"**{section}**", "", ".. list-table::", "   :header-rows: 1",
                 "   :widths: 24 14 62", "",
                 "   * - Option", "     - Default", "     - Meaning"]
        for option in members:
            lines += _cell("   * - ", f"``{option.name}``")
            lines += _cell("     - ", default_text(option))
            doc = option.doc if option.cli else f"{option.doc.rstrip('.')}. {CODE_ONLY_NOTE}"
            lines += _cell("     - ", doc_text(doc))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def render_metrics(metrics: Sequence[MetricSpec] = METRICS) -> str:
    """The metric list of README's "Monitoring" section, as a reStructuredText list-table:
    the name as scraped, its type and labels, its help text (ends with a newline)."""
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 34 12 54", "",
             "   * - Metric", "     - Type", "     - Labels: meaning"]
    for spec in metrics:
        labels = ", ".join(f"``{label}``" for label in spec.labels) or "none"
        lines += _cell("   * - ", f"``{spec.exposed}``")
        lines += _cell("     - ", spec.kind)
        lines += _cell("     - ", f"{labels}: {doc_text(spec.help)}")
    return "\n".join(lines) + "\n"


def _bounds(text: str, start_line: str = START, end_line: str = END) -> tuple[int, int]:
    """Offsets of the region strictly between the marker lines; ValueError if they are absent."""
    start = re.search(rf"^{re.escape(start_line)}[ \t]*\n", text, re.M)
    end = re.search(rf"^{re.escape(end_line)}[ \t]*$", text, re.M)
    if start is None or end is None or end.start() < start.end():
        raise ValueError(f"README.rst needs the lines {start_line!r} and {end_line!r}, in "
                         "that order")
    return start.end(), end.start()


def readme_table(text: str, start_line: str = START, end_line: str = END) -> str:
    """The table currently between the markers of a README text (without the blank borders);
    by default the option table's, :data:`METRICS_START`/:data:`METRICS_END` for the
    metric list."""
    begin, end = _bounds(text, start_line, end_line)
    return text[begin:end].strip("\n") + "\n"


def replace_table(text: str, table: str, start_line: str = START, end_line: str = END) -> str:
    """The README text with ``table`` between the markers (one blank line on each side)."""
    begin, end = _bounds(text, start_line, end_line)
    return text[:begin] + "\n" + table.strip("\n") + "\n\n" + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m gnetserver.docs``."""
    parser = argparse.ArgumentParser(prog="python -m gnetserver.docs",
                                     description="Render the option table as reStructuredText.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true",
                       help="rewrite the table in README.rst between the markers")
    group.add_argument("--check", action="store_true",
                       help="exit 1 when README.rst's table differs from the options")
    group.add_argument("--metrics", action="store_true",
                       help="print the metric list of README's Monitoring section")
    parser.add_argument("--readme", type=Path, default=README, help="(default: %(default)s)")
    args: Any = parser.parse_args(argv)
    table = render()
    metrics = render_metrics()
    if not (args.write or args.check):
        sys.stdout.write(metrics if args.metrics else table)
        return 0
    text = args.readme.read_text(encoding="utf-8")
    # A README without the metric markers (another project's, a test's) has no metric list.
    has_metrics = METRICS_START in text
    if args.check:
        regions = [("option table", readme_table(text), table)]
        if has_metrics:
            regions.append(("metric list", readme_table(text, METRICS_START, METRICS_END),
                            metrics))
        stale = [what for what, current, rendered in regions if current != rendered]
        if stale:
            print(f"{args.readme}: the {' and the '.join(stale)} "
                  f"{'is' if len(stale) == 1 else 'are'} stale; run "
                  "`python -m gnetserver.docs --write`", file=sys.stderr)
        return 1 if stale else 0
    updated = replace_table(text, table)
    if has_metrics:
        updated = replace_table(updated, metrics, METRICS_START, METRICS_END)
    if updated != text:
        args.readme.write_text(updated, encoding="utf-8")
    print(f"{args.readme}: option table and metric list "
          f"{'updated' if updated != text else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
