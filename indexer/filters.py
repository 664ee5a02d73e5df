"""Metadata filters: the ``--where`` language, parsed into a tree and compiled to queries.

The language is small on purpose::

    extension = ".md" and size > 1000
    (lang in ("en", "de") or not year < 2020) and path glob "docs/*"

Fields: ``source`` (alias ``path``), ``title`` and ``doc_id`` are columns of the
documents table; every other name is a metadata field (``extension``, ``size``,
``modified``, and a JSON-lines record's extra fields). Operators: ``= != < <= > >=``,
``in (...)``, ``not in (...)``, ``glob`` (SQLite GLOB: ``*``, ``?``, ``[...]``), combined
with ``and``, ``or``, ``not`` and parentheses. Values are quoted strings or numbers. A
document without a field matches no comparison on it, negated or not (SQL's NULL).

A recursive-descent parser turns the text into a tree of tests (``not`` pushed down onto
them), which :func:`document_ids_sql` compiles to SQL whose every value and field name is
a bound parameter: nothing the user typed is formatted into the statement. A bad
expression raises one :class:`~engine.errors.EngineError` line naming the position.
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
class Test:
    """One field test; ``negated`` holds a ``not`` pushed down onto it (SQL's three-valued
    logic: a document without the field passes neither the test nor its negation)."""

    field: str
    op: str  # = != < <= > >= in glob
    values: tuple  # one value (a pattern for glob), several for in
    negated: bool = False


@dataclass(frozen=True)
class Group:
    """Tests joined by ``and`` or ``or``."""

    op: str  # and | or
    parts: tuple[Test | Group, ...]


Node = Test | Group


@dataclass(frozen=True)
class Condition:
    """A parsed filter: the expression's text and its tree, ``not`` pushed down to the tests."""

    text: str
    tree: Node

    def select(self) -> tuple[str, list]:
        """A SELECT of the matching documents' ids (see :func:`document_ids_sql`)."""
        return document_ids_sql(self.tree)


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
    """``text`` in the filter language as a :class:`Condition` (EngineError if bad)."""
    if not text or not text.strip():
        raise EngineError("--where: empty expression")
    parser = _Parser(text, tokenize(text))
    tree = parser.expression()
    parser.expect_end()
    return Condition(text, tree)


def source_glob(pattern: str) -> Condition:
    """``--source GLOB``: documents whose source path matches the pattern."""
    return Condition(f"source glob {pattern!r}", Test("source", "glob", (pattern,)))


def combine(*conditions: Condition | None) -> Condition | None:
    """All given conditions at once (None when none is given)."""
    given = [c for c in conditions if c is not None]
    if not given:
        return None
    if len(given) == 1:
        return given[0]
    return Condition(
        " and ".join(f"({c.text})" for c in given), Group("and", tuple(c.tree for c in given))
    )


def negate(node: Node) -> Node:
    """``not node`` pushed down to the tests (De Morgan; it holds in three-valued logic)."""
    if isinstance(node, Test):
        return Test(node.field, node.op, node.values, not node.negated)
    return Group("or" if node.op == "and" else "and", tuple(negate(p) for p in node.parts))


# ------------------------------------------------------------------ SQL
def document_ids_sql(node: Node) -> tuple[str, list]:
    """A SELECT of the ids of the documents ``node`` matches, with every value bound.

    A test on a documents column reads the documents table (``source`` through its
    index); a metadata test reads ``metadata_values`` (one row per document and field,
    migration 5) through its (key, value) primary key, so a filter reads the rows it
    matches rather than every document's JSON. ``and`` is INTERSECT, ``or`` UNION.
    """
    if isinstance(node, Group):
        parts = [document_ids_sql(part) for part in node.parts]
        word = " INTERSECT " if node.op == "and" else " UNION "
        return (
            word.join(f"SELECT * FROM ({sql})" for sql, _ in parts),
            [value for _, params in parts for value in params],
        )
    if node.field in COLUMNS:
        sql, params = _test_sql(COLUMNS[node.field], node)
        return f"SELECT id FROM documents WHERE {sql}", params
    sql, params = _test_sql("value", node)
    select = "SELECT document FROM metadata_values WHERE key = ? AND "
    prefix = _literal_prefix(node)
    if prefix is None:
        return select + sql, [node.field, *params]
    # A glob with a literal prefix: text values in the prefix's range of the index, and
    # numbers (SQLite globs their text form; they sort before all text).
    low, high = prefix
    return (
        f"{select}value >= ? AND value < ? AND {sql} UNION ALL {select}value < '' AND {sql}",
        [node.field, low, high, *params, node.field, *params],
    )


def _test_sql(column: str, node: Test) -> tuple[str, list]:
    if node.op == "in":
        sql = f"{column} IN ({','.join('?' * len(node.values))})"
    elif node.op == "glob":
        sql = f"{column} GLOB ?"
    else:
        sql = f"{column} {node.op} ?"
    return (f"NOT ({sql})" if node.negated else sql), list(node.values)


def _literal_prefix(node: Test) -> tuple[str, str] | None:
    """The range of text a glob's literal head spans, as (low, high); None: no such head."""
    if node.op != "glob" or node.negated:
        return None
    pattern = str(node.values[0])
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    if not head or ord(head[-1]) in (0xD7FF, 0x10FFFF):
        return None
    return head, head[:-1] + chr(ord(head[-1]) + 1)


# --------------------------------------------------------------- Milvus
# Characters a Milvus string literal writes escaped; other control characters it cannot.
_MILVUS_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def milvus_expression(condition: Condition, metadata_field: str = "metadata") -> str:
    """The filter as a Milvus boolean expression over an exported collection (VARCHAR
    fields ``source``, ``title``, ``doc_id``; the metadata as the JSON field
    ``metadata_field``). What Milvus cannot say is refused in one line naming it.

    ``in`` becomes ``==`` tests joined by ``or`` (Milvus allows ``in`` on fields, not JSON
    keys); a negated metadata test also needs the key to exist (no field, no match);
    ``glob`` becomes ``like`` (``*`` -> ``%``, ``?`` -> ``_``).
    """
    return _milvus(condition.tree, condition.text, metadata_field)


def _milvus(node: Node, text: str, metadata_field: str) -> str:
    if isinstance(node, Group):
        word = " and " if node.op == "and" else " or "
        return "(" + word.join(_milvus(p, text, metadata_field) for p in node.parts) + ")"
    column = COLUMNS.get(node.field)
    target = column or f'{metadata_field}["{node.field}"]'
    if node.op == "glob":
        test = (
            f"{target} like {_milvus_literal(_like_pattern(node, column is not None, text), text)}"
        )
    elif node.op == "in":
        test = " or ".join(f"{target} == {_milvus_literal(v, text)}" for v in node.values)
        test = f"({test})"
    else:
        op = "==" if node.op == "=" else node.op
        test = f"{target} {op} {_milvus_literal(node.values[0], text)}"
    if not node.negated:
        return test
    if column:
        return f"(not ({test}))"
    return f"(exists {target} and not ({test}))"


def _like_pattern(node: Test, escapable: bool, text: str) -> str:
    """A glob as a like pattern; ``escapable``: the field takes ``\\%`` and ``\\_`` (a
    VARCHAR does, a JSON key's value does not)."""
    pattern = str(node.values[0])
    if "[" in pattern:
        raise EngineError(
            f"--where {text!r}: a glob with [...] has no Milvus equivalent; use * and ? only"
        )
    if not escapable and any(c in pattern for c in "%_\\"):
        raise EngineError(
            f"--where {text!r}: Milvus cannot match a literal %, _ or \\ in a metadata "
            f"field's glob ({node.field} glob {pattern!r})"
        )
    escaped = re.sub(r"([%_\\])", r"\\\1", pattern) if escapable else pattern
    return escaped.replace("*", "%").replace("?", "_")


def _milvus_literal(value: str | float | int, text: str) -> str:
    if not isinstance(value, str):
        return repr(value)
    bad = [c for c in value if ord(c) < 32 and c not in _MILVUS_ESCAPES]
    if bad:
        raise EngineError(
            f"--where {text!r}: Milvus cannot take the control character {bad[0]!r} in a string"
        )
    return '"' + "".join(_MILVUS_ESCAPES.get(c, c) for c in value) + '"'


# --------------------------------------------------------------- parser
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

    def expression(self) -> Node:
        parts = [self.conjunction()]
        while self.is_keyword("or"):
            self.at += 1
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else Group("or", tuple(parts))

    def conjunction(self) -> Node:
        parts = [self.negation()]
        while self.is_keyword("and"):
            self.at += 1
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else Group("and", tuple(parts))

    def negation(self) -> Node:
        if self.is_keyword("not"):
            self.at += 1
            return negate(self.negation())
        return self.atom()

    def atom(self) -> Node:
        token = self.token
        if token.kind == "punct" and token.value == "(":
            self.at += 1
            node = self.expression()
            if not (self.token.kind == "punct" and self.token.value == ")"):
                raise self.fail("expected ')'")
            self.at += 1
            return node
        if token.kind != "name" or str(token.value).lower() in KEYWORDS:
            raise self.fail("expected a field name or '('")
        self.at += 1
        field = str(token.value)
        if self.token.kind == "op":
            op = str(self.token.value)
            self.at += 1
            return Test(field, op, (self.value(),))
        negated = False
        if self.is_keyword("not"):
            negated = True
            self.at += 1
            if not self.is_keyword("in"):
                raise self.fail("expected 'in' after 'not'")
        if self.is_keyword("in"):
            self.at += 1
            return Test(field, "in", tuple(self.values()), negated)
        if self.is_keyword("glob"):
            self.at += 1
            if self.token.kind != "string":
                raise self.fail("expected a quoted pattern after 'glob'")
            pattern = self.token.value
            self.at += 1
            return Test(field, "glob", (pattern,))
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
