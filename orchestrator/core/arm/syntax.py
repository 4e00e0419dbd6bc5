"""The ARM expression language: tokens, syntax tree and parser, and the failures evaluation raises.

Every other module of the package imports this one and none of them is imported by it, so the
function families and the expander never import each other.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MAX_DEPTH = 100  # calls and indexes inside each other; real expressions nest a few levels
SYNTAX_HINT = ("an expression is one call such as [concat('a', parameters('b'))]; "
               "strings use single quotes ('' for a quote); start with [[ for a literal [")


class Failure(Exception):
    """One expression failed; becomes a Problem at the path of the string holding it."""

    def __init__(self, rule: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.rule, self.message, self.hint = rule, message, hint


class Reported(Exception):
    """A value this expression uses already failed, and its problem is listed where it is declared."""


def is_expression(text: str) -> bool:
    return len(text) >= 2 and text.startswith("[") and text.endswith("]")


# --- tokenizer -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    kind: str  # string, int, ident, one of ( ) [ ] , . or end
    text: str
    column: int  # 1-based, counted in the whole JSON string including its leading `[`


_TOKEN_RE = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<int>-?\d+)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()\[\],.])
""", re.VERBOSE)


def tokenize(body: str, text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(body):
        match = _TOKEN_RE.match(body, pos)
        if match is None:
            what = "unterminated string" if body[pos] == "'" else f"unexpected character `{body[pos]}`"
            raise syntax_error(text, pos + 2, what)
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(Token(match.group() if kind == "punct" else kind, match.group(), pos + 2))
        pos = match.end()
    tokens.append(Token("end", "", len(body) + 2))
    return tokens


def syntax_error(text: str, column: int, what: str) -> Failure:
    return Failure("arm-expression", f"syntax error in `{text}` at column {column}: {what}", SYNTAX_HINT)


# --- syntax tree -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Call:
    name: str  # `namespace.member` for a user-defined function
    args: tuple[Any, ...]
    column: int


@dataclass(frozen=True)
class Access:
    target: Any
    key: Any  # a node: `.name` parses as the literal 'name'
    column: int


Node = Literal | Call | Access


# --- parser ----------------------------------------------------------------------------------

@lru_cache(maxsize=4096)
def parse(text: str) -> Node:
    """The syntax tree of `[...]` (the whole JSON string, brackets included); cached, as copy
    loops and lambdas evaluate one string many times."""
    return _Parser(text).parse()


class _Parser:
    """expression := (string | int | name '(' args ')') ('.' name | '[' expression ']')*"""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text[1:-1], text)
        self.pos = 0
        self.depth = 0

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise syntax_error(self.text, 2, "the expression is empty")
        node = self.expression()
        if self.peek().kind != "end":
            raise self.unexpected("the end of the expression")
        return node

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def take(self, kind: str, expected: str) -> Token:
        token = self.peek()
        if token.kind != kind:
            raise self.unexpected(expected)
        self.pos += 1
        return token

    def unexpected(self, expected: str) -> Failure:
        token = self.peek()
        found = "the end" if token.kind == "end" else f"`{token.text}`"
        return syntax_error(self.text, token.column, f"expected {expected}, found {found}")

    def expression(self) -> Node:
        token = self.peek()
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise syntax_error(self.text, token.column, f"calls and indexes nest more than {MAX_DEPTH} levels deep")
        node = self.operand(token)
        self.depth -= 1
        return node

    def operand(self, token: Token) -> Node:
        if token.kind == "string":
            self.pos += 1
            node: Node = Literal(token.text[1:-1].replace("''", "'"))
        elif token.kind == "int":
            self.pos += 1
            node = Literal(int(token.text))
        elif token.kind == "ident":
            node = self.call()
        else:
            raise self.unexpected("a function call, a 'string' or a number")
        while self.peek().kind in (".", "["):
            token = self.peek()
            self.pos += 1
            if token.kind == ".":
                key: Node = Literal(self.take("ident", "a property name").text)
            else:
                key = self.expression()
                self.take("]", "`]`")
            node = Access(node, key, token.column)
        return node

    def call(self) -> Call:
        first = self.take("ident", "a function name")
        name = first.text
        # namespace.member(...) calls a user-defined function of the `functions` section
        if self.peek().kind == "." and self.peek(1).kind == "ident" and self.peek(2).kind == "(":
            name = f"{name}.{self.peek(1).text}"
            self.pos += 2
        if self.peek().kind != "(":
            token = self.peek()
            raise Failure("arm-expression",
                          f"syntax error in `{self.text}` at column {token.column}: expected `(` after `{name}`",
                          "ARM has no bare words: write true(), false(), bool('true') or a 'quoted string'")
        self.pos += 1
        args: list[Node] = []
        if self.peek().kind != ")":
            args.append(self.expression())
            while self.peek().kind == ",":
                self.pos += 1
                args.append(self.expression())
        self.take(")", "`,` or `)`")
        return Call(name, tuple(args), first.column)
