"""Metadata filters: the ``--where`` language, parsed into a parameterised SQL condition.

The language is small on purpose::

    extension = ".md" and size > 1000
    (lang in ("en", "de") or not year < 2020) and path glob "docs/*"

Fields: ``source`` (alias ``path``), ``title`` and ``doc_id`` are columns of the
documents table; every other name is a metadata field (``extension``, ``size``,
``modified``, and a JSON-lines record's extra fields). Operators: ``= != < <= > >=``,
``in (...)``, ``not in (...)``, ``glob`` (SQLite GLOB: ``*``, ``?``, ``[...]``), combined
with ``and``, ``or``, ``not`` and parentheses. Values are quoted strings or numbers. A
document without a field matches no comparison on it, negated or not (SQL's NULL).

A recursive-descent parser turns the text into SQL whose every value and field name is a
bound parameter: nothing the user typed is formatted into the statement. A bad expression
raises one :class:`~engine.errors.EngineError` line naming the position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import EngineError

COLUMNS = {"source": "source", "path": "source", "title": "title", "doc_id": "doc_id"}
COMPARISONS = ("<=", ">=", "!=", "=", "<", ">")
KEYWORDS = ("and", "or", "not", "in", "glob")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<name>[A-Za-z_][\w.\-]*)
      | (?P<op><=|>=|!=|==|=|<|>)
      | (?P<punct>[(),])
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, name, op, punct, end
    value: str | float | int
    position: int  # 0-based offset in the expression


@dataclass(frozen=True)
class Condition:
    """A parsed filter: ``sql`` is a WHERE condition over ``documents``, ``params`` its values."""

    text: str
    sql: str
    params: tuple


def tokenize(text: str) -> list[Token]:
    tokens, at = [], 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = _TOKEN.match(text, at)
        if not match:
            position = at + len(text[at:]) - len(text[at:].lstrip())
            raise _error(text, position, f"unexpected character {text[position]!r}")
        kind = match.lastgroup
        raw = match.group(kind)
        start = match.start(kind)
        if kind == "number":
            value: str | float | int = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "string":
            value = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elif kind == "op":
            value = "=" if raw == "==" else raw
        else:
            value = raw
        tokens.append(Token(kind, value, start))
        at = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def parse(text: str) -> Condition:
    """``text`` in the filter language as a parameterised SQL condition (EngineError if bad)."""
    if not text or not text.strip():
        raise EngineError("--where: empty expression")
    parser = _Parser(text, tokenize(text))
    sql, params = parser.expression()
    parser.expect_end()
    return Condition(text, sql, tuple(params))


def source_glob(pattern: str) -> Condition:
    """``--source GLOB``: documents whose source path matches the pattern."""
    return Condition(f"source glob {pattern!r}", "source GLOB ?", (pattern,))


def combine(*conditions: Condition | None) -> Condition | None:
    """All given conditions at once (None when none is given)."""
    given = [c for c in conditions if c is not None]
    if not given:
        return None
    if len(given) == 1:
        return given[0]
    return Condition(
        " and ".join(f"({c.text})" for c in given),
        " AND ".join(f"({c.sql})" for c in given),
        tuple(p for c in given for p in c.params),
    )


def _error(text: str, position: int, message: str) -> EngineError:
    return EngineError(f"--where: {message} at position {position + 1}: {text}")


class _Parser:
    def __init__(self, text: str, tokens: list[Token]) -> None:
        self.text, self.tokens, self.at = text, tokens, 0

    @property
    def token(self) -> Token:
        return self.tokens[self.at]

    def is_keyword(self, word: str) -> bool:
        token = self.token
        return token.kind == "name" and str(token.value).lower() == word

    def fail(self, message: str) -> EngineError:
        token = self.token
        found = "the end" if token.kind == "end" else repr(str(token.value))
        return _error(self.text, token.position, f"{message}, found {found}")

    def expect_end(self) -> None:
        if self.token.kind != "end":
            raise self.fail("expected 'and', 'or' or the end")

    def expression(self) -> tuple[str, list]:
        sql, params = self.conjunction()
        while self.is_keyword("or"):
            self.at += 1
            right, more = self.conjunction()
            sql, params = f"({sql} OR {right})", params + more
        return sql, params

    def conjunction(self) -> tuple[str, list]:
        sql, params = self.negation()
        while self.is_keyword("and"):
            self.at += 1
            right, more = self.negation()
            sql, params = f"({sql} AND {right})", params + more
        return sql, params

    def negation(self) -> tuple[str, list]:
        if self.is_keyword("not"):
            self.at += 1
            sql, params = self.negation()
            return f"(NOT {sql})", params
        return self.atom()

    def atom(self) -> tuple[str, list]:
        token = self.token
        if token.kind == "punct" and token.value == "(":
            self.at += 1
            sql, params = self.expression()
            if not (self.token.kind == "punct" and self.token.value == ")"):
                raise self.fail("expected ')'")
            self.at += 1
            return sql, params
        if token.kind != "name" or str(token.value).lower() in KEYWORDS:
            raise self.fail("expected a field name or '('")
        self.at += 1
        field_sql, field_params = _field(str(token.value))
        if self.token.kind == "op":
            op = str(self.token.value)
            self.at += 1
            value = self.value()
            return f"{field_sql} {op} ?", [*field_params, value]
        negated = False
        if self.is_keyword("not"):
            negated = True
            self.at += 1
            if not self.is_keyword("in"):
                raise self.fail("expected 'in' after 'not'")
        if self.is_keyword("in"):
            self.at += 1
            values = self.values()
            marks = ",".join("?" * len(values))
            word = "NOT IN" if negated else "IN"
            return f"{field_sql} {word} ({marks})", [*field_params, *values]
        if self.is_keyword("glob"):
            self.at += 1
            if self.token.kind != "string":
                raise self.fail("expected a quoted pattern after 'glob'")
            pattern = self.token.value
            self.at += 1
            return f"{field_sql} GLOB ?", [*field_params, pattern]
        raise self.fail("expected a comparison (= != < <= > >=), 'in' or 'glob'")

    def value(self) -> str | float | int:
        token = self.token
        if token.kind not in ("string", "number"):
            raise self.fail("expected a quoted string or a number")
        self.at += 1
        return token.value

    def values(self) -> list:
        if not (self.token.kind == "punct" and self.token.value == "("):
            raise self.fail("expected '(' after 'in'")
        self.at += 1
        values = [self.value()]
        while self.token.kind == "punct" and self.token.value == ",":
            self.at += 1
            values.append(self.value())
        if not (self.token.kind == "punct" and self.token.value == ")"):
            raise self.fail("expected ',' or ')'")
        self.at += 1
        return values


def _field(name: str) -> tuple[str, list]:
    """SQL for a field: a documents column, or the metadata JSON at a bound path."""
    if name in COLUMNS:
        return COLUMNS[name], []
    return "json_extract(metadata, ?)", ['$."' + name.replace('"', "") + '"']
