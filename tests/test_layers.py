"""The directions between the package's layers, read from the source with ast: every import
at any depth (function-local and TYPE_CHECKING ones too), relative ones resolved. A rule
names the importers it covers and the layers they must not reach; a failure lists each
offending import as `module:line imports target`."""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pytest

from tests.support.paths import REPO

ROOT = "factory_mas"
SOURCE = REPO / ROOT

# The domain vocabulary and persistence every layer builds on.
CORE = ("errors", "messages", "levels", "topics", "hub", "tasks", "times", "settings", "store")
# Loading TensorFlow or scikit-learn costs seconds and hundreds of MB; serving never does.
# The `train` command and the inference bench build models, so they may, inside the
# function that needs them, so that importing them stays as light as serving.
TRAINING_USERS = (f"{ROOT}.cli.commands", f"{ROOT}.bench.inference")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the module imported
    lazy: bool  # inside a function: runs when called, not when the module loads

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_of(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, ast.Module]:
    return {
        module_of(path): ast.parse(path.read_text(), str(path))
        for path in sorted(SOURCE.rglob("*.py"))
    }


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.depth = 0  # functions we are inside
        self.found: list[Import] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def _add(self, node: ast.stmt, target: str) -> None:
        self.found.append(Import(self.module, node.lineno, target, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        self._add(node, base)
        # `from . import x` and `from pkg import module` import the submodules too.
        for alias in node.names:
            if f"{base}.{alias.name}" in self.known:
                self._add(node, f"{base}.{alias.name}")


@cache
def imports() -> tuple[Import, ...]:
    known = set(modules())
    found: list[Import] = []
    for module, tree in modules().items():
        is_package = (SOURCE.parent / module.replace(".", "/") / "__init__.py").exists()
        visitor = _Imports(module, is_package, known)
        visitor.visit(tree)
        found += visitor.found
    return tuple(i for i in found if within(i.target, ROOT))


def within(module: str, *layers: str) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in layers)


def under(*names: str) -> tuple[str, ...]:
    return tuple(f"{ROOT}.{name}" for name in names)


@dataclass(frozen=True)
class Rule:
    name: str
    covers: Callable[[Import], bool]  # the imports the rule speaks about
    forbidden: tuple[str, ...]  # layers those imports must not reach

    def broken_by(self) -> list[Import]:
        return [i for i in imports() if self.covers(i) and within(i.target, *self.forbidden)]


RULES = [
    Rule(
        "serving never imports training",
        lambda i: (
            not within(i.module, *under("training")) and not (i.module in TRAINING_USERS and i.lazy)
        ),
        under("training"),
    ),
    Rule(
        "core never imports http, bridges, agents, ingest, orchestrator or app",
        lambda i: within(i.module, *under(*CORE)),
        under("http", "bridges", "agents", "ingest", "orchestrator", "app"),
    ),
    Rule(
        "ml never imports http or bridges",
        lambda i: within(i.module, *under("ml")),
        under("http", "bridges"),
    ),
    Rule(
        # The old cycle agents -> ingest -> data -> agents: agents read the telemetry
        # schema, so nothing below them may reach back up.
        "ingest, sim and ml never import agents",
        lambda i: within(i.module, *under("ingest", "sim", "ml")),
        under("agents"),
    ),
    Rule(
        "agents never import bridges or app",
        lambda i: within(i.module, *under("agents")),
        under("bridges", "app"),
    ),
    Rule(
        "only the CLI and the benches import the app",
        lambda i: not within(i.module, *under("cli", "bench")),
        under("app"),
    ),
]


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_layer_directions(rule: Rule) -> None:
    broken = rule.broken_by()
    assert not broken, f"{rule.name}, but:\n" + "\n".join(map(str, broken))


def test_the_layer_rules_see_the_whole_package() -> None:
    # A rule that matched nothing would pass forever: each covered layer must exist.
    for name in ("training", "http", "bridges", "agents", "ingest", "orchestrator", "ml"):
        assert f"{ROOT}.{name}" in modules(), name
    for name in (*CORE, "app", "cli"):
        assert f"{ROOT}.{name}" in modules(), name


@pytest.mark.parametrize("user", TRAINING_USERS)
def test_the_training_users_load_it_only_when_called(user: str) -> None:
    # The allowance stays exact: each user still imports training, and only lazily.
    uses = [i for i in imports() if i.module == user and within(i.target, *under("training"))]
    assert uses, f"{user} no longer imports training: drop it from TRAINING_USERS"
    eager = [i for i in uses if not i.lazy]
    assert not eager, "imported when the module loads:\n" + "\n".join(map(str, eager))
