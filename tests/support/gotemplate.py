"""A structural checker for Helm's Go templates, for machines without helm.

It does not render anything. It finds every action (``{{ ... }}``, with ``{{-``/``-}}`` trim markers and
``/* */`` comments), skipping quoted strings inside actions, and checks that actions are closed, that
``if``/``range``/``with``/``define``/``block`` are closed by ``end``, that ``else`` sits inside
``if``/``range``/``with``, that parentheses balance, and that no stray ``}}`` sits in the text. It also lists the
``define``d names, the ``include``/``template`` references and the ``.Values`` paths a template uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

OPENERS = {"if", "range", "with", "define", "block"}
_VALUES = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_INCLUDE = re.compile(r"\b(?:include|template)\s+\"([^\"]+)\"")
_DEFINE = re.compile(r"^(?:define|block)\s+\"([^\"]+)\"")


@dataclass
class Action:
    text: str  # between the delimiters, trim markers and surrounding spaces removed
    line: int


@dataclass
class TemplateReport:
    name: str
    errors: list[str] = field(default_factory=list)
    defines: list[str] = field(default_factory=list)
    includes: list[str] = field(default_factory=list)
    values_paths: set[tuple[str, ...]] = field(default_factory=set)


def _scan_action(source: str, start: int) -> int:
    """Index just past the ``}}`` closing the action whose ``{{`` is at ``start``; -1 when unclosed."""
    i = start + 2
    if source.startswith("/*", i) or source.startswith("- /*", i):
        end = source.find("*/", i)
        if end < 0:
            return -1
        close = source.find("}}", end)
        return -1 if close < 0 else close + 2
    while i < len(source):
        ch = source[i]
        if ch == '"':
            i += 1
            while i < len(source) and source[i] != '"':
                if source[i] == "\n":
                    return -1
                i += 2 if source[i] == "\\" else 1
        elif ch == "`":
            i = source.find("`", i + 1)
            if i < 0:
                return -1
        elif ch == "'":
            i += 1
            while i < len(source) and source[i] != "'":
                i += 2 if source[i] == "\\" else 1
        elif source.startswith("}}", i):
            return i + 2
        elif source.startswith("{{", i):
            return -1  # a new action opens before this one closed
        i += 1
    return -1


def actions(source: str, report: TemplateReport) -> list[Action]:
    """The actions of ``source``; unclosed actions and stray ``}}`` become errors in ``report``."""
    found: list[Action] = []
    pos = 0
    while True:
        start = source.find("{{", pos)
        text_end = len(source) if start < 0 else start
        stray = source.find("}}", pos, text_end)
        if stray >= 0:
            report.errors.append(f"{report.name}:{source.count(chr(10), 0, stray) + 1}: '}}}}' outside an action")
        if start < 0:
            return found
        end = _scan_action(source, start)
        line = source.count("\n", 0, start) + 1
        if end < 0:
            report.errors.append(f"{report.name}:{line}: action opened with '{{{{' is never closed")
            return found
        body = source[start + 2 : end - 2]
        body = body.removeprefix("-").removesuffix("-").strip()
        found.append(Action(body, line))
        pos = end


def _code(body: str) -> str:
    """The action without string literals (for counting parentheses and keywords)."""
    return re.sub(r'"(?:\\.|[^"\\])*"|`[^`]*`', '""', body)


def check(name: str, source: str) -> TemplateReport:
    """Check one template file; the report lists errors, defines, includes and ``.Values`` paths."""
    report = TemplateReport(name)
    stack: list[tuple[str, int]] = []
    for action in actions(source, report):
        body = action.text
        if body.startswith("/*"):
            if not body.endswith("*/"):
                report.errors.append(f"{name}:{action.line}: comment must end with '*/' right before '}}}}'")
            continue
        code = _code(body)
        if code.count("(") != code.count(")"):
            report.errors.append(f"{name}:{action.line}: unbalanced parentheses in {{{{ {body} }}}}")
        if not code:
            report.errors.append(f"{name}:{action.line}: empty action")
            continue
        keyword = code.split()[0]
        if keyword in OPENERS:
            stack.append((keyword, action.line))
            match = _DEFINE.match(body)
            if keyword in {"define", "block"}:
                if not match:
                    report.errors.append(f"{name}:{action.line}: {keyword} needs a quoted name")
                else:
                    report.defines.append(match.group(1))
        elif keyword == "else":
            if not stack or stack[-1][0] not in {"if", "range", "with"}:
                report.errors.append(f"{name}:{action.line}: 'else' outside if/range/with")
        elif keyword == "end":
            if code != "end":
                report.errors.append(f"{name}:{action.line}: 'end' takes no arguments")
            if not stack:
                report.errors.append(f"{name}:{action.line}: 'end' without an open block")
            else:
                stack.pop()
        report.includes += _INCLUDE.findall(body)
        report.values_paths |= {tuple(m.split(".")[1:]) for m in _VALUES.findall(code)}
    for keyword, line in stack:
        report.errors.append(f"{name}:{line}: '{keyword}' opened here is never closed by 'end'")
    return report
