"""The GPU-readiness rules of the script audit: find CPU-era habits in a PyTorch script, patch them.

Two passes over a libcst tree. `_Audit` gathers the nodes and the module-wide facts
(which names are models, loaders, moved, returned), decides the findings and registers
edits keyed by the *original* nodes; `_Apply` then rewrites only those nodes, so every
other byte of the user's file (comments, spacing, quotes) comes back unchanged.
Every patch is a no-op on its own output, so auditing a patched file finds nothing to fix.
"""
from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.metadata import MetadataWrapper, PositionProvider

from handlers.training.audit.findings import Finding
from handlers.training.audit.cst import (DEVICE_EXPR, NO_GRAD, PIN_EXPR, WORKERS_EXPR, _BUILDER, _EVAL_FN, _NOT_TENSOR,
                               Edit, _Apply, add_kwarg, dotted, free_names, is_cuda_literal, kwarg,
                               last_name, modelish, moved_names, n_positional, param_names, prepend,
                               set_kwarg)


class _Audit:
    def __init__(self, wrapper: MetadataWrapper, relpath: str) -> None:
        self.module, self.relpath = wrapper.module, relpath
        self.pos = wrapper.resolve(PositionProvider)
        module = self.module
        self.calls, self.fors = m.findall(module, m.Call()), m.findall(module, m.For())
        self.funcs = m.findall(module, m.FunctionDef())
        classes = m.findall(module, m.ClassDef())
        in_class = {id(a) for c in classes for a in m.findall(c, m.Assign())}
        self.assigns = [a for a in m.findall(module, m.Assign()) if id(a) not in in_class]
        # The innermost function around each assignment (findall walks outer before inner).
        self.owner = {id(a): fn for fn in self.funcs for a in m.findall(fn.body, m.Assign())}
        self.returned = {id(fn): {r.value.value for r in m.findall(fn.body, m.Return(value=m.Name()))}
                         for fn in self.funcs}
        self.module_level = {t.target.value for a in self.assigns if id(a) not in self.owner
                             for t in a.targets if isinstance(t.target, cst.Name)}
        self.top_binds = {al.asname.name.value if al.asname else dotted(al.name).split(".")[0]
                          for s in module.body if isinstance(s, cst.SimpleStatementLine)
                          for i in s.body if isinstance(i, cst.Import) for al in i.names}
        self.from_imports = {(al.asname.name.value if al.asname else al.name.value):
                             dotted(i.module) or "" for i in m.findall(module, m.ImportFrom())
                             if i.module and not isinstance(i.names, cst.ImportStar) for al in i.names}
        self.classes = {c.name.value: [dotted(b.value) for b in c.bases] for c in classes}
        # Lightning runs *_step hooks under no_grad and eval() itself.
        self.lightning = {id(f) for c in classes for f in m.findall(c, m.FunctionDef())
                          if any((dotted(b.value) or "").endswith("LightningModule") for b in c.bases)}
        self.findings: list[Finding] = []
        self.edits: dict[cst.CSTNode, list[Edit]] = {}
        self.seen: set[tuple[int, str]] = set()
        self.needs: set[str] = set()             # "device", "torch", "os"
        self.device = "device"
        self.moved = moved_names(module)
        self.loaders = {t.target.value for a in self.assigns for t in a.targets
                        if isinstance(t.target, cst.Name) and isinstance(a.value, cst.Call)
                        and (last_name(a.value.func) or "").endswith("DataLoader")}
        self.models: set[str] = set()
        self.module_classes: set[str] = set()
        for _ in self.classes:   # local nn.Module subclasses, through local bases too
            self.module_classes = {c for c, bases in self.classes.items() if any(
                b in ("nn.Module", "torch.nn.Module", "Module") or b in self.module_classes
                for b in bases)}

    def code(self, node: cst.CSTNode) -> str:
        text = " ".join(self.module.code_for_node(node).split())
        return text if len(text) <= 60 else text[:57] + "..."

    def report(self, node, rule: str, message: str, fix: str = "", edit: Edit | None = None,
               target: cst.CSTNode | None = None, needs: tuple[str, ...] = ()) -> None:
        if (id(node), rule) in self.seen:
            return
        self.seen.add((id(node), rule))
        start = self.pos[node].start
        where = self.device_scope(node) if edit is not None and "device" in needs else "module"
        if where == "too-early":
            fix, edit = "", None
            message += f" (not patched: `{self.device}` is assigned further down this function)"
        elif where == "local":   # the function's own `device` serves; no module-level line
            needs = tuple(n for n in needs if n != "device")
        self.findings.append(Finding(self.relpath, start.line, start.column + 1, rule, message,
                                     fix if edit else "", edit is not None))
        if edit is not None:
            self.edits.setdefault(target or node, []).append(edit)
            self.needs.update(needs)

    def device_scope(self, node: cst.CSTNode) -> str:
        """Where `device` in a patch at `node` resolves: "local" (a parameter, or assigned
        above), "too-early" (assigned below: UnboundLocalError) or "module"."""
        line = self.pos[node].start.line
        inside = [f for f in self.funcs if self.pos[f].start.line <= line <= self.pos[f].end.line]
        if not inside:
            return "module"
        if self.device in param_names(inside[-1]):
            return "local"
        first = min((self.pos[a].start.line for a in self.assigns if self.owner.get(id(a)) is inside[-1]
                     and any(m.matches(t.target, m.Name(self.device)) for t in a.targets)), default=None)
        return "module" if first is None else "local" if first < line else "too-early"

    # -- rule 1: hardcoded-cuda ---------------------------------------------------------
    def hardcoded_cuda(self) -> None:
        dev = cst.Name(self.device)
        for call in self.calls:
            func = call.func
            cuda_call = m.matches(func, m.Attribute(attr=m.Name("cuda"))) and dotted(func.value) != "torch"
            if cuda_call:
                self.report(call, "hardcoded-cuda",
                            f"`{self.code(call)}` needs a CUDA GPU; it fails on a machine without one",
                            f"use `.to({self.device})`", needs=("device",), edit=lambda c: c.with_changes(
                                func=c.func.with_changes(attr=cst.Name("to")),
                                args=[cst.Arg(dev), *[  # the GPU index goes; non_blocking= stays
                                    a.with_changes(comma=cst.MaybeSentinel.DEFAULT) for a in c.args
                                    if a.keyword and a.keyword.value != "device"]]))
            elif (isinstance(func, cst.Attribute) and func.attr.value == "to" and call.args
                  and call.args[0].keyword is None and is_cuda_literal(call.args[0].value)):
                self.report(call.args[0].value, "hardcoded-cuda",
                            f"`{self.code(call)}` names the CUDA device literally",
                            f"use `.to({self.device})`", needs=("device",),
                            edit=lambda v: dev)
            for arg in call.args if not cuda_call else ():
                if arg.keyword and arg.keyword.value == "device" and is_cuda_literal(arg.value):
                    self.report(arg.value, "hardcoded-cuda",
                                f"`device={self.code(arg.value)}` names the CUDA device literally",
                                f"use `device={self.device}`", needs=("device",), edit=lambda v: dev)
        for assign in self.assigns:
            target = assign.targets[0].target
            # `device = torch.device("cuda")`; a bare "cuda" string only under a device-like name
            if len(assign.targets) == 1 and is_cuda_literal(assign.value) and (
                    isinstance(assign.value, cst.Call) or "dev" in (last_name(target) or "").lower()):
                self.report(assign.value, "hardcoded-cuda",
                            f"`{self.code(assign)}` assumes a CUDA GPU is present",
                            f"use `{DEVICE_EXPR}`", needs=("torch",),
                            edit=lambda v: cst.parse_expression(DEVICE_EXPR))

    # -- rule 2: model-not-moved --------------------------------------------------------
    def is_constructor(self, call: cst.Call) -> bool:
        name, last = dotted(call.func) or "", last_name(call.func) or ""
        if name.startswith(("torchvision.models.", "models.")) or name in self.module_classes:
            return True
        if name.startswith(("nn.", "torch.nn.")) or self.from_imports.get(name) == "torch.nn":
            return (last[:1].isupper() and not last.endswith("Loss")
                    and not last.startswith("Parameter"))
        source = self.from_imports.get(name, "")
        return source.startswith("torchvision.models") or bool(_BUILDER.match(last))

    def model_not_moved(self) -> None:
        for assign in self.assigns:
            target = assign.targets[0].target
            if (len(assign.targets) != 1 or not isinstance(target, cst.Name)
                    or not isinstance(assign.value, cst.Call) or not self.is_constructor(assign.value)):
                continue
            self.models.add(target.value)
            owner = self.owner.get(id(assign))
            # A builder that returns the model leaves placement to its caller.
            if target.value in self.moved or (owner and target.value in self.returned[id(owner)]):
                continue
            self.report(target, "model-not-moved",
                        f"`{target.value}` is built here and never moved to the GPU",
                        f"append `.to({self.device})` to the constructor call", needs=("device",),
                        target=assign.value, edit=lambda c: cst.Call(
                            cst.Attribute(c, cst.Name("to")), [cst.Arg(cst.Name(self.device))]))

    # -- rule 3: tensor-not-moved -------------------------------------------------------
    def loader_iter(self, expr: cst.CSTNode) -> tuple[bool, bool]:
        """(iterates a DataLoader, through enumerate)."""
        if isinstance(expr, cst.Call) and expr.args and last_name(expr.func) in ("enumerate", "tqdm"):
            inner, counted = self.loader_iter(expr.args[0].value)
            return inner, counted or last_name(expr.func) == "enumerate"
        name = last_name(expr) or ""
        return name in self.loaders or "loader" in name.lower(), False

    def tensor_not_moved(self) -> None:
        for loop in self.fors:
            is_loader, counted = self.loader_iter(loop.iter)
            target = loop.target
            if not is_loader:
                continue
            if counted:
                if not isinstance(target, (cst.Tuple, cst.List)) or len(target.elements) != 2:
                    continue
                target = target.elements[1].value
            names = [n.value for n in m.findall(target, m.Name())]
            used, moved = free_names(loop.body), moved_names(loop.body)
            todo = [n for n in names if n in used and n not in moved and not n.startswith("_")
                    and not (set(n.lower().split("_")) & _NOT_TENSOR)]
            if not todo:
                continue
            containers = [n for n in todo if self.is_container(loop.body, n)]
            if containers:   # a dict/list batch: only the user knows what to move
                if not moved:
                    self.report(loop.target, "tensor-not-moved",
                                f"the batch `{containers[0]}` from the loader is never moved to the GPU "
                                "(it is indexed or unpacked: move its tensors with .to(device))")
                continue
            lhs = ", ".join(todo)
            rhs = ", ".join(f"{n}.to({self.device}, non_blocking=True)" for n in todo)
            stmt = cst.parse_statement(f"{lhs} = {rhs}\n")
            self.report(loop.target, "tensor-not-moved",
                        f"`{lhs}` from the loader stay on the CPU while the model may be on the GPU",
                        f"insert `{lhs} = {rhs}` at the top of the loop", needs=("device",),
                        target=loop, edit=lambda f, stmt=stmt: f.with_changes(body=prepend(f.body, stmt)))

    @staticmethod
    def is_container(body: cst.CSTNode, name: str) -> bool:
        return bool(m.findall(body, m.Subscript(value=m.Name(name)))
                    or m.findall(body, m.Call(func=m.Attribute(value=m.Name(name), attr=m.Name(
                        "items") | m.Name("keys") | m.Name("values"))))
                    or m.findall(body, m.Assign(value=m.Name(name)))
                    or m.findall(body, m.For(iter=m.Name(name))))

    # -- rules 4, 5, 6: DataLoader and torch.load keywords ------------------------------
    def call_keywords(self) -> None:
        for call in self.calls:
            name = dotted(call.func) or ""
            if any(a.star == "**" for a in call.args):   # the keyword may hide in **kwargs
                continue
            if name == "DataLoader" or name.endswith(".DataLoader"):
                pin, workers = kwarg(call, "pin_memory"), kwarg(call, "num_workers")
                if n_positional(call) <= 7 and (pin is None or m.matches(pin.value, m.Name("False"))):
                    self.report(call, "dataloader-no-pin-memory",
                                "DataLoader without pin_memory: host-to-GPU copies are slower and "
                                "non_blocking=True has no effect", f"set `pin_memory={PIN_EXPR}`",
                                needs=("torch",), edit=lambda c: set_kwarg(c, "pin_memory", PIN_EXPR))
                if n_positional(call) <= 5 and (workers is None or m.matches(workers.value, m.Integer("0"))):
                    self.report(call, "dataloader-no-workers",
                                "DataLoader loads batches in the main process: the GPU waits on data "
                                "(workers need the `if __name__ == \"__main__\":` guard on spawn platforms)",
                                f"set `num_workers={WORKERS_EXPR}`", needs=("os",),
                                edit=lambda c: set_kwarg(c, "num_workers", WORKERS_EXPR))
            elif name == "torch.load" and kwarg(call, "map_location") is None and n_positional(call) < 2:
                self.report(call, "torch-load-no-map-location",
                            "torch.load without map_location: a checkpoint saved on a GPU fails to "
                            "load on a machine without one", f"add `map_location={self.device}`",
                            needs=("device",), edit=lambda c: add_kwarg(
                                c, "map_location", cst.Name(self.device)))

    # -- rules 7, 8: evaluation functions -----------------------------------------------
    def eval_functions(self) -> None:
        trained = {last_name(c.func.value) for c in self.calls
                   if m.matches(c.func, m.Attribute(attr=m.Name("train")))}
        for fn in self.funcs:
            name = fn.name.value
            if not _EVAL_FN.search(name) or "train" in name.lower() or id(fn) in self.lightning or m.findall(
                    fn, m.Call(func=m.Attribute(attr=m.Name("backward")))):
                continue
            calls = m.findall(fn.body, m.Call())
            if not (any(modelish(last_name(c.func), self.models) for c in calls)
                    or any(self.loader_iter(f.iter)[0] for f in m.findall(fn.body, m.For()))):
                continue
            guarded = any(dotted(d.decorator.func if isinstance(d.decorator, cst.Call) else d.decorator)
                          in NO_GRAD for d in fn.decorators) or any(
                dotted(i.item.func) in NO_GRAD for i in m.findall(fn.body, m.WithItem(item=m.Call())))
            if not guarded:
                self.report(fn.name, "eval-without-no-grad",
                            f"`{name}()` evaluates without torch.no_grad(): autograd keeps every "
                            "activation, so GPU memory grows and inference is slower",
                            "add `@torch.no_grad()`", needs=("torch",), target=fn,
                            edit=lambda f: f.with_changes(decorators=[
                                *f.decorators, cst.Decorator(cst.parse_expression("torch.no_grad()"))]))
            if any(m.matches(c.func, m.Attribute(attr=m.Name("eval"))) for c in calls):
                continue
            model = self.model_in(fn)
            message = f"`{name}()` never calls .eval(): dropout and batch-norm stay in training mode"
            if model is None or not any(modelish(t, self.models) for t in trained):
                self.report(fn.name, "eval-without-model-eval", message + " (call model.eval() "
                            "here and model.train() at the start of each training epoch)")
                continue
            stmt = cst.parse_statement(f"{model}.eval()\n")
            self.report(fn.name, "eval-without-model-eval", message, f"insert `{model}.eval()` at the top",
                        target=fn, edit=lambda f, stmt=stmt: f.with_changes(
                            body=prepend(f.body, stmt, after_docstring=True)))

    def model_in(self, fn: cst.FunctionDef) -> str | None:
        params = param_names(fn)
        # A model built inside the function does not exist yet at its first line.
        made_here = {t.target.value for a in m.findall(fn.body, m.Assign()) for t in a.targets
                     if isinstance(t.target, cst.Name)}
        used = free_names(fn.body) - made_here
        if "model" in params or "model" in used:
            return "model"
        for candidate in [*sorted(self.models & used), *[p for p in params if modelish(p, set())]]:
            return candidate
        attrs = {dotted(a) for a in m.findall(fn.body, m.Attribute(value=m.Name("self")))}
        return "self.model" if "self.model" in attrs else None

    # -- the module header: import os / import torch / device = ... ---------------------
    def header(self, module: cst.Module) -> cst.Module:
        body = list(module.body)
        imports = [i for i, s in enumerate(body) if m.matches(s, m.SimpleStatementLine(
            body=[m.Import() | m.ImportFrom()]))]
        future = [i for i in imports if m.matches(body[i].body[0], m.ImportFrom(
            module=m.Name("__future__")))]
        top = 1 if body and m.matches(body[0], m.SimpleStatementLine(
            body=[m.Expr(value=m.SimpleString() | m.ConcatenatedString())])) else 0
        new: list[cst.SimpleStatementLine] = []
        if "torch" in self.needs and "torch" not in self.top_binds:
            new.append(cst.parse_statement("import torch\n"))
        if "device" in self.needs:
            line = cst.parse_statement(f"{self.device} = {DEVICE_EXPR}\n")
            new.append(line.with_changes(leading_lines=[cst.EmptyLine()]) if imports else line)
        at = imports[-1] + 1 if imports else top
        body[at:at] = new
        if "os" in self.needs and "os" not in self.top_binds:
            firsts = [i for i in imports if i not in future]
            at = firsts[0] if firsts else (future[-1] + 1 if future else top)
            stmt = cst.parse_statement("import os\n")
            if firsts:   # the blank lines/comment above the first import stay above the block
                stmt = stmt.with_changes(leading_lines=body[at].leading_lines)
                body[at] = body[at].with_changes(leading_lines=())
            body.insert(at, stmt)
        return module.with_changes(body=body)

    def run(self) -> tuple[list[Finding], str]:
        module_level = self.module_level   # a script's own DEVICE constant is reused
        self.device = "DEVICE" if "DEVICE" in module_level and "device" not in module_level else "device"
        self.hardcoded_cuda()
        self.model_not_moved()
        self.tensor_not_moved()
        self.call_keywords()
        self.eval_functions()
        if "device" in self.needs:
            self.needs.add("torch")
            if self.device in module_level:
                self.needs.discard("device")
        findings = sorted(self.findings, key=lambda f: (f.line, f.column, f.rule))
        if not self.edits:
            return findings, self.module.code
        self.edits[self.module] = [self.header]
        return findings, self.module.visit(_Apply(self.edits)).code


def analyze(source: str, relpath: str) -> tuple[list[Finding], str]:
    """Findings and patched source; raises libcst.ParserSyntaxError on a file that doesn't parse."""
    return _Audit(MetadataWrapper(cst.parse_module(source)), relpath).run()
