"""Mutation testing of the pure modules: does each test suite notice a small wrong change?

For every module in MODULES, each mutant is one small change of its syntax tree (a flipped
comparison or boolean operator, a changed constant, a negated condition, a deleted
statement). A mutant is run against the tests that cover its module, in a scratch copy of
the tree; it is killed when a test fails, and survives when all pass. Mutants that cannot
be killed because they change nothing observable are listed, with the reason, in
scripts/mutate-equivalent.txt and count as killed.

    .venv/bin/python scripts/mutate.py                      # every module, both cores
    .venv/bin/python scripts/mutate.py multiconsole/domain/display.py --jobs 2
    .venv/bin/python scripts/mutate.py --list multiconsole/proxy/tickets.py   # the mutants only
    .venv/bin/python scripts/mutate.py multiconsole/wire/vmcreate.py --keys survivors.txt  # only these
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = ROOT / "scripts" / "mutate-equivalent.txt"

# Each pure module and the tests that cover it (engine tests on SQLite only: the rules do not
# depend on the database).
MODULES: dict[str, list[str]] = {
    "multiconsole/domain/display.py": [
        "tests/unit/test_display.py",
        "tests/engine/test_rules_matrix.py -k sqlite",
    ],
    "multiconsole/domain/devices.py": [
        "tests/unit/test_devices.py",
        "tests/unit/test_display.py",
        "tests/unit/test_vmcreate.py",
    ],
    "multiconsole/proxy/tickets.py": ["tests/unit/test_proxy_tickets.py", "tests/unit/test_proxy.py"],
    "multiconsole/wire/stats.py": ["tests/unit/test_stats.py", "tests/unit/test_wire_edges.py"],
    "multiconsole/wire/vmcreate.py": ["tests/unit/test_wire_edges.py", "tests/unit/test_vmcreate.py"],
    "multiconsole/wire/vvfile.py": ["tests/unit/test_vvfile.py"],
    "multiconsole/wire/errors.py": ["tests/unit/test_wire_codes.py"],
    "multiconsole/wire/exits.py": ["tests/unit/test_wire_codes.py", "tests/unit/test_stats.py"],
}
TIMEOUT = 300  # seconds for one mutant's test run (a mutant may loop forever)

_COMPARE_SWAPS = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BINOP_SWAPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.BitOr: ast.BitAnd,
    ast.BitAnd: ast.BitOr,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
}


@dataclass(frozen=True)
class Mutant:
    module: str
    index: int  # the n-th mutation point of the module, in tree order
    line: int
    scope: str  # the enclosing function or class, for a key that survives line shifts
    what: str  # "`a == b` -> `a != b`"

    @property
    def key(self) -> str:
        return f"{self.module}::{self.scope}::{self.what}"


@dataclass
class Result:
    mutant: Mutant
    killed: bool
    equivalent: str | None = None  # the reason, when listed as equivalent
    seconds: float = 0.0


def _src(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 70 else text[:67] + "..."


class _Points(ast.NodeVisitor):
    """Finds the mutation points of a module, in a fixed order, as (node path, kind, what)."""

    def __init__(self):
        self.points: list[tuple[int, str, str, str, int]] = []  # (node id, kind, what, scope, line)
        self._scope: list[str] = []
        self._docstrings: set[int] = set()

    def _add(self, node: ast.AST, kind: str, what: str) -> None:
        scope = ".".join(self._scope) or "<module>"
        self.points.append((id(node), kind, what, scope, getattr(node, "lineno", 0)))

    def _body_docstring(self, node) -> None:
        body = getattr(node, "body", None)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                self._docstrings.add(id(body[0]))
                self._docstrings.add(id(body[0].value))

    def visit_Module(self, node):
        self._body_docstring(node)
        self.generic_visit(node)

    def _scoped(self, node):
        self._body_docstring(node)
        self._scope.append(node.name)
        self.generic_visit(node)
        self._scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Compare(self, node):
        for i, op in enumerate(node.ops):
            if type(op) in _COMPARE_SWAPS:
                new = copy.deepcopy(node)
                new.ops[i] = _COMPARE_SWAPS[type(op)]()
                self._add(node, f"compare:{i}", f"`{_src(node)}` -> `{_src(new)}`")
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        other = "or" if isinstance(node.op, ast.And) else "and"
        self._add(node, "boolop", f"`{_src(node)}`: {'and' if other == 'or' else 'or'} -> {other}")
        self.generic_visit(node)

    def visit_BinOp(self, node):
        if type(node.op) in _BINOP_SWAPS:
            new = copy.deepcopy(node)
            new.op = _BINOP_SWAPS[type(node.op)]()
            self._add(node, "binop", f"`{_src(node)}` -> `{_src(new)}`")
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            self._add(node, "not", f"`{_src(node)}` -> `{_src(node.operand)}`")
        self.generic_visit(node)

    def visit_JoinedStr(self, node):
        # One mutant per f-string (its parts are not mutated one by one).
        self._add(node, "fstring", f"`{_src(node)}` -> `f'XX' + ...`")

    def visit_Call(self, node):
        # What a log line says is for people, not behaviour.
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in ("log", "logger"):
            return
        self.generic_visit(node)

    def visit_Constant(self, node):
        if id(node) in self._docstrings:
            return
        v = node.value
        if isinstance(v, bool):
            self._add(node, "const", f"`{v}` -> `{not v}`")
        elif isinstance(v, int):
            self._add(node, "const", f"`{v}` -> `{v + 1}`")
        elif isinstance(v, float):
            self._add(node, "const", f"`{v}` -> `{v + 1}`")
        elif isinstance(v, str) and v:
            self._add(node, "const", f"`{_src(node)}` -> `'XX' + ...`")

    def visit_If(self, node):
        self._add(node, "negate", f"`if {_src(node.test)}` -> `if not (...)`")
        self.generic_visit(node)

    def visit_While(self, node):
        self._add(node, "negate", f"`while {_src(node.test)}` -> `while not (...)`")
        self.generic_visit(node)

    def visit_IfExp(self, node):
        self._add(node, "negate", f"`{_src(node)}`: condition negated")
        self.generic_visit(node)

    def generic_visit(self, node):
        for stmt_list_name in ("body", "orelse", "finalbody"):
            stmts = getattr(node, stmt_list_name, None)
            if isinstance(stmts, list):
                for stmt in stmts:
                    # Module-level statements are imports and constants: deleting one fails every import.
                    if self._scope and isinstance(stmt, ast.stmt) and self._deletable(stmt):
                        self._add(stmt, "delete", f"delete `{_src(stmt).splitlines()[0]}`")
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns"):
                continue  # not evaluated (from __future__ import annotations): no behaviour
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    self.visit(child)

    def _deletable(self, stmt: ast.stmt) -> bool:
        if id(stmt) in self._docstrings:
            return False
        if isinstance(stmt, ast.Return):
            return stmt.value is not None and not (
                isinstance(stmt.value, ast.Constant) and stmt.value.value is None
            )
        return isinstance(stmt, ast.Expr | ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Raise | ast.If)


class _Apply(ast.NodeTransformer):
    """Applies mutation point `target` (the same traversal order as _Points)."""

    def __init__(self, tree: ast.AST, target: tuple[int, str]):
        self.target_id, self.kind = target

    def visit(self, node):
        if id(node) == self.target_id:
            replaced = self._mutate(node)
            if replaced is not None:
                return replaced
        return super().visit(node)

    def _mutate(self, node):
        kind = self.kind
        if kind.startswith("compare:"):
            i = int(kind.split(":")[1])
            node.ops[i] = _COMPARE_SWAPS[type(node.ops[i])]()
            return node
        if kind == "boolop":
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            return node
        if kind == "binop":
            node.op = _BINOP_SWAPS[type(node.op)]()
            return node
        if kind == "not":
            return node.operand
        if kind == "const":
            v = node.value
            if isinstance(v, bool):
                return ast.Constant(not v)
            if isinstance(v, int | float):
                return ast.Constant(v + 1)
            return ast.Constant("XX" + v)
        if kind == "fstring":
            node.values.insert(0, ast.Constant("XX"))
            return node
        if kind == "negate":
            node.test = ast.UnaryOp(ast.Not(), node.test)
            return node
        if kind == "delete":
            if isinstance(node, ast.Return):
                return ast.Return(ast.Constant(None))
            return ast.Pass()
        raise ValueError(kind)


def mutants_of(module: str) -> list[Mutant]:
    tree = ast.parse((ROOT / module).read_text())
    finder = _Points()
    finder.visit(tree)
    seen: dict[tuple[str, str], int] = {}
    out = []
    for i, (_, _, what, scope, line) in enumerate(finder.points):
        n = seen[scope, what] = seen.get((scope, what), 0) + 1
        out.append(Mutant(module, i, line, scope, what if n == 1 else f"{what} #{n}"))
    return out


def mutated_source(module: str, index: int) -> str:
    tree = ast.parse((ROOT / module).read_text())
    finder = _Points()
    finder.visit(tree)
    node_id, kind, *_ = finder.points[index]
    new = _Apply(tree, (node_id, kind)).visit(tree)
    ast.fix_missing_locations(new)
    return ast.unparse(new) + "\n"


def load_equivalent(path: Path = EQUIVALENT_FILE) -> dict[str, str]:
    """`key  # reason` lines; a key without a reason is an error (the score must mean something)."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, reason = line.partition("  # ")
        if not sep or not reason.strip():
            raise SystemExit(f"{path.name}:{n}: an equivalent mutant needs its reason after '  # '")
        out[key.strip()] = reason.strip()
    return out


def _scratch_copy() -> Path:
    """A copy of the package and the tests, in which one module at a time is replaced."""
    work = Path(tempfile.mkdtemp(prefix="mc-mutate-"))
    for part in ("multiconsole", "tests", "pyproject.toml"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, work / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, work / part)
    node_modules = ROOT / "node_modules"
    if node_modules.exists():
        (work / "node_modules").symlink_to(node_modules)
    return work


# Imported once by each worker before it forks a child per test run, so that a run pays only
# for importing the project (which it must, mutated) and the tests.
_PRELOAD = (
    "pytest",
    "hypothesis",
    "fastapi",
    "fastapi.testclient",
    "sqlalchemy",
    "sqlalchemy.orm",
    "alembic",
    "pydantic",
    "lxml.etree",
    "cryptography.x509",
    "httpx",
    "libvirt",
    "websockets",
    "jinja2",
    "PIL.Image",
)


def _run_forked(work: Path, spec: str) -> bool:
    """Run one pytest spec in a forked child; True when every test passed."""
    pid = os.fork()
    if pid == 0:  # the child: quiet, in the scratch tree, then pytest
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.chdir(work)
            code = pytest_main(["-x", "-q", "-p", "no:cacheprovider", "--no-header", *spec.split()])
            os._exit(int(code))
        except BaseException:
            os._exit(99)
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:  # a mutant that loops forever is killed
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return False
        time.sleep(0.02)


def pytest_main(args: list[str]) -> int:
    import pytest

    return pytest.main(args)


def serve(work: Path, jobs: list[str]) -> None:
    """A worker: preload the libraries, then for each 'module:index' mutate, test, restore, and
    print 'module:index killed|survived seconds' (read by the parent)."""
    import importlib
    import warnings

    warnings.simplefilter("ignore")  # the libraries' deprecation notes, once per worker
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(work))
    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    assert not any(m == "multiconsole" or m.startswith("multiconsole.") for m in sys.modules)
    for job in jobs:
        module, index = job.rsplit(":", 1)
        target = work / module
        original = target.read_text()
        target.write_text(mutated_source(module, int(index)))
        started = time.monotonic()
        try:
            survived = all(_run_forked(work, spec) for spec in MODULES[module])
        finally:
            target.write_text(original)
        print(f"{job} {'survived' if survived else 'killed'} {time.monotonic() - started:.2f}", flush=True)


def run_tests(work: Path, specs: list[str]) -> bool:
    """True when every test passes, each spec in its own pytest process."""
    env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
    for spec in specs:
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            "--no-header",
            *spec.split(),
        ]
        try:
            done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, timeout=TIMEOUT * 4)
        except subprocess.TimeoutExpired:
            return False
        if done.returncode != 0:
            return False
    return True


def _worker_run(mutants: list[Mutant], report, equivalent: dict[str, str]) -> None:
    if not mutants:
        return
    work = _scratch_copy()
    by_job = {f"{m.module}:{m.index}": m for m in mutants}
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, __file__, "--serve", str(work), *by_job]
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT) as proc:
            for line in proc.stdout:
                job, verdict, seconds = line.split()
                m = by_job[job]
                report(Result(m, verdict == "killed", equivalent.get(m.key), float(seconds)))
        if proc.returncode != 0:
            raise RuntimeError(f"a mutation worker failed (exit {proc.returncode})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def baseline_ok(specs_by_module: dict[str, list[str]]) -> list[str]:
    """Modules whose tests fail before any mutation (the run would mean nothing)."""
    work = _scratch_copy()
    try:
        return [m for m, specs in specs_by_module.items() if not run_tests(work, specs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(results: list[Result], modules: list[str]) -> Table:
    table = Table(title="mutation testing")
    for col in ("module", "mutants", "killed", "equivalent", "survived", "score"):
        table.add_column(col, justify="left" if col == "module" else "right", no_wrap=True)
    for module in modules:
        rs = [r for r in results if r.mutant.module == module]
        if not rs:
            continue
        killed = sum(r.killed for r in rs)
        equiv = sum(1 for r in rs if not r.killed and r.equivalent)
        survived = len(rs) - killed - equiv
        score = 100.0 * (killed + equiv) / len(rs)
        table.add_row(module, str(len(rs)), str(killed), str(equiv), str(survived), f"{score:.1f} %")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of MODULES)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel workers")
    parser.add_argument("--list", action="store_true", help="list the mutants and their keys, run nothing")
    parser.add_argument(
        "--keys",
        metavar="FILE",
        help="run only the mutants whose keys FILE lists, one a line (e.g. the survivors of a run)",
    )
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)  # a worker (internal)
    args = parser.parse_args(argv)
    if args.serve:
        serve(Path(args.serve), args.modules)
        return 0
    modules = args.modules or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"not a module with tests listed in MODULES: {', '.join(unknown)}")
    console = Console(width=None if sys.stdout.isatty() else 120)  # a log keeps whole lines
    mutants = [m for module in modules for m in mutants_of(module)]
    if args.keys:
        wanted = {line.strip() for line in Path(args.keys).read_text().splitlines() if line.strip()}
        mutants = [m for m in mutants if m.key in wanted]
    equivalent = load_equivalent()
    if args.list:
        for m in mutants:
            console.print(f"{m.module}:{m.line}  {m.key}", highlight=False, markup=False, soft_wrap=True)
        return 0
    broken = baseline_ok({m: MODULES[m] for m in modules})
    if broken:
        console.print(f"[red]tests fail before mutation for: {', '.join(broken)}[/red]")
        return 2
    started = time.monotonic()
    results: list[Result] = []
    jobs = max(1, args.jobs)
    shares = [mutants[i::jobs] for i in range(jobs)]
    with Progress(
        TextColumn("mutants"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as progress:
        task = progress.add_task("mutants", total=len(mutants))

        def report(result: Result) -> None:
            results.append(result)
            progress.advance(task)

        with ThreadPoolExecutor(jobs) as pool:
            for f in [pool.submit(_worker_run, share, report, equivalent) for share in shares]:
                f.result()
    console.print(summary(results, modules))
    survivors = sorted(
        (r for r in results if not r.killed and not r.equivalent), key=lambda r: r.mutant.index
    )
    if survivors:
        console.print(
            "[bold]survivors[/bold] (kill them with a test, or list them with the reason in "
            f"{EQUIVALENT_FILE.relative_to(ROOT)})"
        )
        for r in sorted(survivors, key=lambda r: (r.mutant.module, r.mutant.line)):
            console.print(
                f"  {r.mutant.module}:{r.mutant.line}  {r.mutant.key}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
    stale = set(equivalent) - {m.key for m in mutants} if not args.modules else set()
    for key in sorted(stale):
        console.print(f"listed as equivalent but no longer a mutant: {key}", highlight=False, markup=False)
    console.print(f"{len(mutants)} mutants in {time.monotonic() - started:.0f} s with {jobs} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
