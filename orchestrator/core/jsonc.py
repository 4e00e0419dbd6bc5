"""JSON with comments, as Azure Resource Manager reads templates: `//` line comments and
`/* block */` comments outside strings.

Each comment becomes spaces (its line breaks kept), so a JSON error later still names the line
and column of the file as written. One regular expression skips text and whole strings (so the
`//` of "https://..." stays text); Python only runs at a `/` outside a string.
"""
from __future__ import annotations

import re

# text and strings up to the next `/` outside a string (an unclosed string runs to the end);
# written as unrolled loops, which the re module runs several times faster than alternations
_PLAIN = re.compile(r'[^"/]*(?:"[^"\\]*(?:\\.[^"\\]*)*"?[^"/]*)*', re.DOTALL)
_NOT_A_LINE_BREAK = re.compile(r"[^\r\n]")


class UnclosedComment(ValueError):
    def __init__(self, line: int, column: int) -> None:
        super().__init__(f"a /* comment at line {line}, column {column} is never closed")
        self.line, self.column = line, column


def strip_comments(text: str) -> str:
    """`text` with its comments blanked out; UnclosedComment for a /* without */."""
    if "/" not in text:
        return text
    out: list[str] = []
    pos = 0
    while True:
        end = _PLAIN.match(text, pos).end()  # type: ignore[union-attr]  (it matches the empty string)
        out.append(text[pos:end])
        if end >= len(text):
            return "".join(out)
        if text.startswith("//", end):
            stop = text.find("\n", end)
            stop = len(text) if stop < 0 else stop
        elif text.startswith("/*", end):
            stop = text.find("*/", end + 2)
            if stop < 0:
                line_start = text.rfind("\n", 0, end) + 1
                raise UnclosedComment(text.count("\n", 0, end) + 1, end - line_start + 1)
            stop += 2
        else:
            stop = end + 1  # a lone `/` is not a comment; JSON will say what it is
            out.append("/")
            pos = stop
            continue
        out.append(_NOT_A_LINE_BREAK.sub(" ", text[end:stop]))
        pos = stop
