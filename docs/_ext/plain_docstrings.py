"""Render a docstring that is not valid reStructuredText as preformatted text, instead of failing.

The package's docstrings are written for the terminal (``help()``) first: most are valid RST,
some use ``|x|`` for an absolute value or indent a continuation line, which docutils reads as a
substitution or a block quote. ``sphinx-build -W`` would fail on them. This hook (run after
napoleon) escapes ``|`` outside tables, then parses the docstring with docutils alone; if it still
reports a problem (other than the Sphinx roles docutils does not know), the docstring's first
paragraph is kept as its summary and the rest is shown verbatim in a literal block. Nothing is
hidden: every word of the docstring is rendered.
"""

from __future__ import annotations

import io
import re

import sphinx.ext.autosummary as autosummary
from docutils.core import publish_doctree
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: docutils alone does not know Sphinx's roles (:func:, :class:, ...): those messages are not problems
_SPHINX_ROLE = re.compile(r'(Unknown interpreted text role|No role entry for) "[\w:]+"|Trying "[\w:]+" as canonical')


def _escape_bars(line: str) -> str:
    stripped = line.lstrip()
    if stripped.startswith(("|", "+", "==", "--")):  # a table or a line block: leave it
        return line
    return re.sub(r"(?<!\\)\|", r"\\|", line)


def _problems(text: str, env) -> list[str]:
    stream = io.StringIO()
    # env: Sphinx's roles, active while a page is read, look it up in the settings
    settings = {"report_level": 2, "halt_level": 5, "warning_stream": stream, "env": env}
    publish_doctree(text, settings_overrides=settings)
    return [ln for ln in stream.getvalue().splitlines() if ln.strip() and not _SPHINX_ROLE.search(ln)]


def _first_paragraph(lines: list[str]) -> int:
    return next((i for i, ln in enumerate(lines) if not ln.strip()), len(lines))


def process(app, what, name, obj, options, lines: list[str]) -> None:
    if not lines:
        return
    escaped = [_escape_bars(ln) for ln in lines]
    if not _problems("\n".join(escaped), app.env):
        lines[:] = escaped
        return
    logger.verbose("plain_docstrings: the docstring of %s is shown verbatim (not valid RST)", name)
    cut = _first_paragraph(escaped)
    head = escaped[:cut] if not _problems("\n".join(escaped[:cut]), app.env) else []
    body = lines[len(head) :]
    while body and not body[0].strip():
        body = body[1:]
    if not body:
        lines[:] = head
        return
    lines[:] = [*head, "", "::", "", *("    " + ln if ln.strip() else "" for ln in body), ""]


_extract_summary = autosummary.extract_summary


def _summary(doc, settings) -> str:
    """autosummary's first sentence, or the whole first paragraph when that sentence ends inside
    an inline literal (``"`sorted` must be 1. ..."``: Sphinx checks the paragraph, not the cut)."""
    summary = _extract_summary(doc, settings)
    if summary.count("``") % 2 == 0:
        return summary
    return " ".join(ln.strip() for ln in doc[: _first_paragraph(list(doc))])


def setup(app):
    autosummary.extract_summary = _summary
    app.connect("autodoc-process-docstring", process, priority=600)  # after napoleon (500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
