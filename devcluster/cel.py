"""A small interpreter for the CEL of ``x-kubernetes-validations`` rules.

It covers what CRD rules are usually written with: literals (int, uint, double, string, bytes,
bool, null, lists, maps), ``self`` / ``oldSelf`` and field selection, indexing, the operators
(``! - * / % + < <= > >= == != in && || ?:``), the macros ``has``, ``all``, ``exists``,
``exists_one``, ``map`` and ``filter``, and the functions ``size``, ``int``, ``uint``,
``double``, ``string``, ``bool``, ``type``, ``contains``, ``startsWith``, ``endsWith``,
``matches``, ``lowerAscii``, ``upperAscii``, ``trim``, ``split``, ``join``, ``indexOf``,
``lastIndexOf``, ``isSorted``, ``sum``, ``min``, ``max`` (Kubernetes' list library).

``parse`` fails with ``CelSyntaxError`` on what is not CEL (so the API server refuses the CRD);
``evaluate`` raises ``CelError`` on a runtime error (no such key, a type mismatch, division by
zero) and ``CelUnsupported`` on a function it does not know, which the caller treats as "not
checked" rather than as a violation. Cost estimation is not done.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class CelError(Exception):
    """A runtime error of a rule (the API server reports it as the rule failing)."""


class CelSyntaxError(CelError):
    """A rule that does not parse."""


class CelUnsupported(CelError):
    """A function or construct this interpreter does not implement."""


@dataclass(frozen=True)
class Token:
    kind: str  # int | uint | double | string | bytes | ident | op | end
    value: Any
    pos: int


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<double>(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)
  | (?P<hex>0[xX][0-9a-fA-F]+[uU]?)
  | (?P<int>\d+[uU]?)
  | (?P<string>[rR]?[bB]?[rR]?(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\|\||&&|==|!=|<=|>=|[-+*/%!<>?:.,\[\](){}])
""", re.VERBOSE)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "`": "`", "?": "?", "a": "\a",
            "b": "\b", "f": "\f", "v": "\v"}


def _unquote(text: str) -> tuple[str, bool]:
    prefix = ""
    while text[0] in "rRbB":
        prefix += text[0].lower()
        text = text[1:]
    quote = 3 if text[:3] in ('"""', "'''") else 1
    body = text[quote:-quote]
    if "r" in prefix:
        return body, "b" in prefix
    out: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            nxt = body[index + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                index += 2
                continue
            if nxt in "uU":
                width = 4 if nxt == "u" else 8
                out.append(chr(int(body[index + 2:index + 2 + width], 16)))
                index += 2 + width
                continue
            if nxt in "xX":
                out.append(chr(int(body[index + 2:index + 4], 16)))
                index += 4
                continue
            raise CelSyntaxError(f"invalid escape sequence \\{nxt}")
        out.append(char)
        index += 1
    return "".join(out), "b" in prefix


def tokenize(source: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        if match is None:
            raise CelSyntaxError(f"Syntax error: token recognition error at: '{source[pos]}' (position {pos + 1})")
        kind = match.lastgroup or ""
        text = match.group()
        if kind == "double":
            tokens.append(Token("double", float(text), pos))
        elif kind in ("int", "hex"):
            unsigned = text[-1] in "uU"
            digits = text.rstrip("uU")
            number = int(digits, 16) if kind == "hex" else int(digits)
            tokens.append(Token("uint" if unsigned else "int", number, pos))
        elif kind == "string":
            value, is_bytes = _unquote(text)
            tokens.append(Token("bytes" if is_bytes else "string", value.encode() if is_bytes else value, pos))
        elif kind == "ident":
            tokens.append(Token("ident", text, pos))
        elif kind == "op":
            tokens.append(Token("op", text, pos))
        pos = match.end()
    tokens.append(Token("end", None, pos))
    return tokens


# ---- the parser: tuples as the syntax tree ----------------------------------------------------------

Node = tuple[Any, ...]
_RESERVED = {"as", "break", "const", "continue", "else", "for", "function", "if", "import", "let", "loop",
             "package", "namespace", "return", "var", "void", "while"}
_MACROS = {"all", "exists", "exists_one", "map", "filter"}


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = tokenize(source)
        self.index = 0

    def peek(self, value: str | None = None) -> bool:
        token = self.tokens[self.index]
        return token.kind == "op" and (value is None or token.value == value)

    def take(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expect(self, value: str) -> None:
        token = self.take()
        if token.kind != "op" or token.value != value:
            shown = token.value if token.kind != "end" else "<EOF>"
            raise CelSyntaxError(f"Syntax error: mismatched input '{shown}' expecting '{value}' "
                                 f"(position {token.pos + 1})")

    def parse(self) -> Node:
        node = self.expr()
        token = self.tokens[self.index]
        if token.kind != "end":
            raise CelSyntaxError(f"Syntax error: extraneous input '{token.value}' (position {token.pos + 1})")
        return node

    def expr(self) -> Node:
        condition = self.binary(0)
        if self.peek("?"):
            self.take()
            then = self.binary(0)
            self.expect(":")
            otherwise = self.expr()
            return ("cond", condition, then, otherwise)
        return condition

    _LEVELS: tuple[tuple[str, ...], ...] = (("||",), ("&&",), ("==", "!=", "<", "<=", ">", ">=", "in"),
                                            ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while True:
            token = self.tokens[self.index]
            operator = token.value if token.kind == "op" or (token.kind == "ident" and token.value == "in") \
                else None
            if operator not in self._LEVELS[level]:
                return left
            self.take()
            right = self.binary(level + 1)
            left = ("binary", operator, left, right)

    def unary(self) -> Node:
        if self.peek("!"):
            self.take()
            return ("not", self.unary())
        if self.peek("-"):
            self.take()
            token = self.tokens[self.index]
            if token.kind in ("int", "double") and not (self.tokens[self.index + 1].kind == "op"
                                                         and self.tokens[self.index + 1].value in (".", "[")):
                self.take()
                return ("lit", -token.value)
            return ("neg", self.unary())
        return self.member()

    def member(self) -> Node:
        node = self.primary()
        while True:
            if self.peek("."):
                self.take()
                name = self.take()
                if name.kind != "ident":
                    raise CelSyntaxError(f"Syntax error: no viable alternative at input '.' (position {name.pos + 1})")
                if self.peek("("):
                    self.take()
                    node = ("call", name.value, node, self.arguments(")"))
                else:
                    node = ("select", node, name.value)
            elif self.peek("["):
                self.take()
                index = self.expr()
                self.expect("]")
                node = ("index", node, index)
            else:
                return node

    def arguments(self, closing: str) -> list[Node]:
        args: list[Node] = []
        if self.peek(closing):
            self.take()
            return args
        while True:
            args.append(self.expr())
            if self.peek(","):
                self.take()
                if self.peek(closing):  # a trailing comma
                    self.take()
                    return args
                continue
            self.expect(closing)
            return args

    def primary(self) -> Node:
        token = self.take()
        if token.kind in ("int", "double", "string", "bytes"):
            return ("lit", token.value)
        if token.kind == "uint":
            return ("lit", token.value)
        if token.kind == "ident":
            name = token.value
            if name in ("true", "false"):
                return ("lit", name == "true")
            if name == "null":
                return ("lit", None)
            if name in _RESERVED:
                raise CelSyntaxError(f"Syntax error: reserved identifier: {name} (position {token.pos + 1})")
            if self.peek("("):
                self.take()
                return ("call", name, None, self.arguments(")"))
            return ("ident", name)
        if token.kind == "op":
            if token.value == "(":
                node = self.expr()
                self.expect(")")
                return node
            if token.value == "[":
                return ("list", self.arguments("]"))
            if token.value == "{":
                entries: list[tuple[Node, Node]] = []
                while not self.peek("}"):
                    key = self.expr()
                    self.expect(":")
                    entries.append((key, self.expr()))
                    if not self.peek(","):
                        break
                    self.take()
                self.expect("}")
                return ("map", entries)
            if token.value == ".":  # a leading-dot qualified identifier
                return self.primary()
        shown = token.value if token.kind != "end" else "<EOF>"
        raise CelSyntaxError(f"Syntax error: mismatched input '{shown}' expecting <expression> "
                             f"(position {token.pos + 1})")


def parse(source: str) -> Node:
    """The syntax tree of a rule; ``CelSyntaxError`` when it is not CEL."""
    return _Parser(source).parse()


# ---- evaluation ---------------------------------------------------------------------------------------

def _type_name(value: Any) -> str:
    if value is None:
        return "null_type"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(left: Any, right: Any) -> bool:
    if _numeric(left) and _numeric(right):
        return bool(left == right)
    if type(left) is not type(right) and not (left is None or right is None) and \
            (isinstance(left, bool) or isinstance(right, bool) or _type_name(left) != _type_name(right)):
        return False
    return bool(left == right)


def _compare(operator: str, left: Any, right: Any) -> bool:
    comparable = (_numeric(left) and _numeric(right)) or (type(left) is type(right)
                                                           and isinstance(left, str | bytes | bool))
    if not comparable:
        raise CelError(f"no such overload: {_type_name(left)} {operator} {_type_name(right)}")
    if operator == "<":
        return bool(left < right)
    if operator == "<=":
        return bool(left <= right)
    if operator == ">":
        return bool(left > right)
    return bool(left >= right)


def _arithmetic(operator: str, left: Any, right: Any) -> Any:
    if operator == "+":
        if (_numeric(left) and _numeric(right)) or (type(left) is type(right)
                                                    and isinstance(left, str | bytes | list)):
            return left + right
    elif _numeric(left) and _numeric(right):
        if operator == "-":
            return left - right
        if operator == "*":
            return left * right
        if isinstance(left, float) or isinstance(right, float):
            if operator == "/":
                return left / right if right else float("inf") if left > 0 else float("-inf")
        else:
            if right == 0:
                raise CelError("division by zero" if operator == "/" else "modulus by zero")
            quotient = abs(left) // abs(right) * (1 if (left >= 0) == (right >= 0) else -1)
            return quotient if operator == "/" else left - right * quotient
    raise CelError(f"no such overload: {_type_name(left)} {operator} {_type_name(right)}")


def _size(value: Any) -> int:
    if isinstance(value, str | bytes | list | dict):
        return len(value)
    raise CelError(f"no such overload: size({_type_name(value)})")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise CelError("no such overload: int(bool)")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError as exc:
            raise CelError(f"cannot convert {value!r} to int") from exc
    raise CelError(f"no such overload: int({_type_name(value)})")


def _to_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, int | float | str):
        return str(value)
    raise CelError(f"no such overload: string({_type_name(value)})")


def _to_double(value: Any) -> float:
    if _numeric(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError as exc:
            raise CelError(f"cannot convert {value!r} to double") from exc
    raise CelError(f"no such overload: double({_type_name(value)})")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise CelError(f"cannot convert {value!r} to bool")


def _string_method(name: str, target: str, args: list[Any]) -> Any:
    if name == "contains":
        return args[0] in target
    if name == "startsWith":
        return target.startswith(args[0])
    if name == "endsWith":
        return target.endswith(args[0])
    if name == "matches":
        return re.search(args[0], target) is not None
    if name == "lowerAscii":
        return "".join(c.lower() if c.isascii() else c for c in target)
    if name == "upperAscii":
        return "".join(c.upper() if c.isascii() else c for c in target)
    if name == "trim":
        return target.strip()
    if name == "split":
        return target.split(args[0]) if len(args) == 1 else target.split(args[0], args[1] - 1)
    if name == "indexOf":
        return target.find(args[0])
    if name == "lastIndexOf":
        return target.rfind(args[0])
    if name == "replace":
        return target.replace(args[0], args[1]) if len(args) == 2 else target.replace(args[0], args[1], args[2])
    if name == "substring":
        return target[args[0]:args[1]] if len(args) == 2 else target[args[0]:]
    if name == "size":
        return len(target)
    raise CelUnsupported(f"undeclared reference to '{name}' on a string")


def _list_method(name: str, target: list[Any], args: list[Any]) -> Any:
    if name == "size":
        return len(target)
    if name == "isSorted":
        return all(_compare("<=", a, b) for a, b in itertools.pairwise(target))
    if name == "sum":
        return sum(target)
    if name == "min":
        if not target:
            raise CelError("min called on empty list")
        return min(target)
    if name == "max":
        if not target:
            raise CelError("max called on empty list")
        return max(target)
    if name == "indexOf":
        return next((i for i, item in enumerate(target) if _equal(item, args[0])), -1)
    if name == "lastIndexOf":
        return next((i for i in range(len(target) - 1, -1, -1) if _equal(target[i], args[0])), -1)
    if name == "join":
        return (args[0] if args else "").join(target)
    raise CelUnsupported(f"undeclared reference to '{name}' on a list")


class _Evaluator:
    def __init__(self, variables: dict[str, Any]) -> None:
        self.scopes = [variables]

    def lookup(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise CelError(f"undeclared reference to '{name}'")

    def run(self, node: Node) -> Any:
        tag = node[0]
        if tag == "lit":
            return node[1]
        if tag == "ident":
            return self.lookup(node[1])
        if tag == "list":
            return [self.run(item) for item in node[1]]
        if tag == "map":
            return {self.run(key): self.run(value) for key, value in node[1]}
        if tag == "select":
            target = self.run(node[1])
            if not isinstance(target, dict):
                raise CelError(f"no such overload: field selection on {_type_name(target)}")
            if node[2] not in target:
                raise CelError(f"no such key: {node[2]}")
            return target[node[2]]
        if tag == "index":
            target, key = self.run(node[1]), self.run(node[2])
            if isinstance(target, list):
                if not _numeric(key) or (isinstance(key, float) and key != int(key)):
                    raise CelError(f"unsupported index type {_type_name(key)} in list")
                if not 0 <= int(key) < len(target):
                    raise CelError(f"index out of bounds: {key}")
                return target[int(key)]
            if isinstance(target, dict):
                if key not in target:
                    raise CelError(f"no such key: {key}")
                return target[key]
            raise CelError(f"no such overload: index of {_type_name(target)}")
        if tag == "not":
            value = self.run(node[1])
            if not isinstance(value, bool):
                raise CelError(f"no such overload: !{_type_name(value)}")
            return not value
        if tag == "neg":
            value = self.run(node[1])
            if not _numeric(value):
                raise CelError(f"no such overload: -{_type_name(value)}")
            return -value
        if tag == "cond":
            condition = self.run(node[1])
            if not isinstance(condition, bool):
                raise CelError("no matching overload for '_?_:_'")
            return self.run(node[2] if condition else node[3])
        if tag == "binary":
            return self.binary(node[1], node[2], node[3])
        if tag == "call":
            return self.call(node[1], node[2], node[3])
        raise CelUnsupported(f"unknown node {tag}")

    def logical(self, operator: str, left_node: Node, right_node: Node) -> bool:
        # CEL's commutative logic: an error on one side is absorbed when the other side decides.
        outcomes: list[bool | CelError] = []
        for side in (left_node, right_node):
            try:
                value = self.run(side)
                if not isinstance(value, bool):
                    raise CelError(f"no such overload: {_type_name(value)} {operator} ...")
            except CelUnsupported:
                raise
            except CelError as exc:
                outcomes.append(exc)
                continue
            if value == (operator == "||"):
                return value
            outcomes.append(value)
        for outcome in outcomes:
            if isinstance(outcome, CelError):
                raise outcome
        return operator != "||"

    def binary(self, operator: str, left_node: Node, right_node: Node) -> Any:
        if operator in ("&&", "||"):
            return self.logical(operator, left_node, right_node)
        left, right = self.run(left_node), self.run(right_node)
        if operator == "==":
            return _equal(left, right)
        if operator == "!=":
            return not _equal(left, right)
        if operator in ("<", "<=", ">", ">="):
            return _compare(operator, left, right)
        if operator == "in":
            if isinstance(right, list):
                return any(_equal(left, item) for item in right)
            if isinstance(right, dict):
                return left in right
            raise CelError(f"no such overload: {_type_name(left)} in {_type_name(right)}")
        return _arithmetic(operator, left, right)

    def macro(self, name: str, target_node: Node, args: list[Node]) -> Any:
        if len(args) != 2 or args[0][0] != "ident":
            raise CelSyntaxError(f"{name}() takes a variable and an expression")
        target = self.run(target_node)
        if not isinstance(target, list | dict):
            raise CelError(f"no such overload: {_type_name(target)}.{name}()")
        variable, body = args[0][1], args[1]
        results: list[tuple[Any, Any]] = []
        for item in list(target):
            self.scopes.append({variable: item})
            try:
                results.append((item, self.run(body)))
            finally:
                self.scopes.pop()
        if name == "all":
            return all(result is True for _, result in results)
        if name == "exists":
            return any(result is True for _, result in results)
        if name == "exists_one":
            return sum(1 for _, result in results if result is True) == 1
        if name == "map":
            return [result for _, result in results]
        return [item for item, result in results if result is True]  # filter

    def call(self, name: str, target_node: Node | None, arg_nodes: list[Node]) -> Any:
        if name == "has" and target_node is None:
            if len(arg_nodes) != 1 or arg_nodes[0][0] != "select":
                raise CelSyntaxError("invalid argument to has() macro")
            container = self.run(arg_nodes[0][1])
            if not isinstance(container, dict):
                raise CelError(f"no such overload: has() on {_type_name(container)}")
            return arg_nodes[0][2] in container
        if target_node is not None and name in _MACROS:
            return self.macro(name, target_node, arg_nodes)
        args = [self.run(arg) for arg in arg_nodes]
        if target_node is None:
            return self.function(name, args)
        target = self.run(target_node)
        if isinstance(target, str):
            return _string_method(name, target, args)
        if isinstance(target, list):
            return _list_method(name, target, args)
        if name == "size" and isinstance(target, bytes | dict):
            return _size(target)
        raise CelUnsupported(f"undeclared reference to '{name}' on {_type_name(target)}")

    def function(self, name: str, args: list[Any]) -> Any:
        functions: dict[str, Callable[[Any], Any]] = {
            "size": _size, "int": _to_int, "uint": _to_int, "string": _to_string, "type": _type_name,
            "double": _to_double, "bool": _to_bool, "dyn": lambda value: value,
        }
        if name == "matches" and len(args) == 2:
            return _string_method("matches", args[0], args[1:])
        if name in functions and len(args) == 1:
            return functions[name](args[0])
        raise CelUnsupported(f"undeclared reference to '{name}'")


def evaluate(tree: Node, variables: dict[str, Any]) -> Any:
    """The value of a parsed rule with ``variables`` (``self``, ``oldSelf``)."""
    try:
        return _Evaluator(variables).run(tree)
    except RecursionError as exc:
        raise CelError("the expression is too deeply nested") from exc
    except (TypeError, ValueError, re.error) as exc:
        raise CelError(str(exc)) from exc


def uses_old_self(tree: Node) -> bool:
    """Whether a rule is a transition rule (refers to ``oldSelf``)."""
    if tree[0] == "ident":
        return bool(tree[1] == "oldSelf")
    return any(uses_old_self(part) for part in _children(tree))


def _children(tree: Node) -> list[Node]:
    found: list[Node] = []
    for part in tree[1:]:
        if isinstance(part, tuple) and part and isinstance(part[0], str):
            found.append(part)
        elif isinstance(part, list):
            for item in part:
                if isinstance(item, tuple) and item and isinstance(item[0], str):
                    found.append(item)
                elif isinstance(item, tuple):  # map entries
                    found.extend(sub for sub in item if isinstance(sub, tuple))
    return found
