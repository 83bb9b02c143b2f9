"""libcst helpers of the script audit: reading names and calls, and the small edits
(add a keyword, set one, prepend a statement) that the rules register on original nodes."""
from __future__ import annotations

import re
from typing import Callable

import libcst as cst
import libcst.matchers as m

DEVICE_EXPR = 'torch.device("cuda" if torch.cuda.is_available() else "cpu")'
WORKERS_EXPR = "min(4, os.cpu_count() or 1)"
PIN_EXPR = "torch.cuda.is_available()"
NO_GRAD = {"torch.no_grad", "no_grad", "torch.inference_mode", "inference_mode",
           "torch.set_grad_enabled", "set_grad_enabled"}
_CUDA = re.compile(r"cuda(:\d+)?$")
_EVAL_FN = re.compile(r"(?i)eval|valid|test|predict|infer")
_MODELISH = re.compile(r"(?i)^(\w+_)?(model|net|network)$")
_VERB = re.compile(r"(?i)^(build|create|get|make|load|init|new)_")
# Functions that, by their name, return a fresh model (`build_model`, `timm.create_model`).
_BUILDER = re.compile(r"(?i)^(build|create|get|make|init|new|load)_\w*(model|net|network)$")
# Loop targets that are labels of samples, not tensors: moving them would fail.
_NOT_TENSOR = {"path", "paths", "name", "names", "file", "files", "filename", "filenames",
               "fname", "fnames", "id", "ids", "idx", "index", "meta", "metadata", "text",
               "texts", "caption", "captions", "key", "keys"}
# Calls that take over device placement (accelerate, lightning fabric).
_PLACERS = {"prepare", "setup", "to_device", "move_to"}
_EQ = cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                      whitespace_after=cst.SimpleWhitespace(""))

Edit = Callable[[cst.CSTNode], cst.CSTNode]


def dotted(expr: cst.CSTNode) -> str | None:
    if isinstance(expr, cst.Name):
        return expr.value
    if isinstance(expr, cst.Attribute):
        base = dotted(expr.value)
        return f"{base}.{expr.attr.value}" if base else None
    return None


def last_name(expr: cst.CSTNode) -> str | None:
    if isinstance(expr, cst.Name):
        return expr.value
    return expr.attr.value if isinstance(expr, cst.Attribute) else None


def is_cuda_literal(expr: cst.CSTNode) -> bool:
    """"cuda", "cuda:0", torch.device("cuda") or torch.device("cuda", 0)."""
    if isinstance(expr, cst.SimpleString):
        value = expr.evaluated_value
        return isinstance(value, str) and bool(_CUDA.match(value))
    return (isinstance(expr, cst.Call) and dotted(expr.func) == "torch.device"
            and bool(expr.args) and expr.args[0].keyword is None
            and is_cuda_literal(expr.args[0].value))


def kwarg(call: cst.Call, name: str) -> cst.Arg | None:
    return next((a for a in call.args if a.keyword and a.keyword.value == name), None)


def n_positional(call: cst.Call) -> int:
    return sum(1 for a in call.args if a.keyword is None and not a.star)


def free_names(node: cst.CSTNode) -> set[str]:
    """Names read or bound in `node`, leaving out attribute names (`self.model` -> {"self"})."""
    attrs = {id(a.attr) for a in m.findall(node, m.Attribute())}
    return {n.value for n in m.findall(node, m.Name()) if id(n) not in attrs}


def moved_names(node: cst.CSTNode) -> set[str]:
    """Names inside the receiver of a `.to(...)`/`.cuda(...)`, or handed to a placer."""
    out: set[str] = set()
    for call in m.findall(node, m.Call(func=m.Attribute())):
        attr = call.func.attr.value
        if attr in ("to", "cuda"):
            out |= free_names(call.func.value)
        elif attr in _PLACERS:
            out |= {n for a in call.args for n in free_names(a.value)}
    return out


def param_names(fn: cst.FunctionDef) -> list[str]:
    p = fn.params
    return [a.name.value for a in (*p.posonly_params, *p.params, *p.kwonly_params)]


def modelish(name: str | None, models: set[str]) -> bool:
    return bool(name) and (name in models or (bool(_MODELISH.match(name)) and not _VERB.match(name)))


def add_kwarg(call: cst.Call, name: str, value: cst.BaseExpression) -> cst.Call:
    """Append `name=value`, following the call's layout (one line, or one argument a line)."""
    new = cst.Arg(value=value, keyword=cst.Name(name), equal=_EQ)
    args = list(call.args)
    if not args:
        return call.with_changes(args=[new])
    last = args[-1]
    sep = next((a.comma.whitespace_after for a in args[-2:-1] if isinstance(a.comma, cst.Comma)),
               call.whitespace_before_args)
    if isinstance(sep, cst.ParenthesizedWhitespace):   # drop a comment that belongs to its line
        sep = sep.with_changes(first_line=cst.TrailingWhitespace(), empty_lines=[])
    else:
        sep = cst.SimpleWhitespace(" ")
    end = last.comma.whitespace_after if isinstance(last.comma, cst.Comma) else None
    if isinstance(end, cst.ParenthesizedWhitespace) and isinstance(sep, cst.ParenthesizedWhitespace):
        # Trailing comma, one argument a line: the last line keeps its comment.
        args[-1] = last.with_changes(comma=last.comma.with_changes(whitespace_after=sep.with_changes(
            first_line=end.first_line, empty_lines=end.empty_lines)))
        new = new.with_changes(comma=cst.Comma(whitespace_after=end.with_changes(
            first_line=cst.TrailingWhitespace(), empty_lines=[])))
    else:
        new = new.with_changes(comma=last.comma, whitespace_after_arg=last.whitespace_after_arg)
        args[-1] = last.with_changes(comma=cst.Comma(whitespace_after=sep),
                                     whitespace_after_arg=cst.SimpleWhitespace(""))
    return call.with_changes(args=[*args, new])


def set_kwarg(call: cst.Call, name: str, code: str) -> cst.Call:
    value = cst.parse_expression(code)
    if kwarg(call, name) is None:
        return add_kwarg(call, name, value)
    return call.with_changes(args=[a.with_changes(value=value) if a.keyword and a.keyword.value == name
                                   else a for a in call.args])


def prepend(block: cst.BaseSuite, stmt: cst.SimpleStatementLine, after_docstring: bool = False):
    if not isinstance(block, cst.IndentedBlock):       # `for x in l: f(x)` on one line
        return block.with_changes(body=[*stmt.body, *block.body])
    body = list(block.body)
    at = 1 if after_docstring and body and m.matches(body[0], m.SimpleStatementLine(
        body=[m.Expr(value=m.SimpleString() | m.ConcatenatedString())])) else 0
    return block.with_changes(body=[*body[:at], stmt, *body[at:]])


class _Apply(cst.CSTTransformer):
    """Pass 2: rewrite exactly the nodes that have edits; leave the rest as parsed."""

    def __init__(self, edits: dict[cst.CSTNode, list[Edit]]) -> None:
        self.edits = edits

    def on_leave(self, original, updated):
        for edit in self.edits.get(original, ()):
            updated = edit(updated)
        return updated
