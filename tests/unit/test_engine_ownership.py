"""Each piece of the engine is the only writer of its own state (read from the source, with ast).

- Slot state (`_busy`, `_hungry`, `_held`) is named nowhere in the package but in
  engine/slots.py, and there only as `self._...` inside SlotPool.
- No engine module reaches into another object's private attributes.
- No engine module assigns an attribute that a class of another engine module sets on itself:
  pieces change each other only through calls.
- The imports inside the engine run one way, without a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import executor

PACKAGE = Path(executor.__file__).parent
ENGINE = PACKAGE / "engine"
SLOT_STATE = {"_busy", "_hungry", "_held"}
# The quota code is its own room (engine/limits*), with its own records; the workflow instance
# and its private loop (loop.py) drive asyncio internals on purpose.
PIECES = sorted(
    p
    for p in ENGINE.glob("*.py")
    if not p.name.startswith("limits") and p.name not in ("instance.py", "loop.py")
)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return node.targets
    if isinstance(node, ast.AugAssign | ast.AnnAssign):
        return [node.target]
    if isinstance(node, ast.Delete):
        return node.targets
    return []


def _assigned_attributes(target: ast.expr) -> list[ast.Attribute]:
    """The attributes a target writes: `a.b = `, `a.b[k] = `, `(a.b, c.d) = `, `del a.b[k]`."""
    if isinstance(target, ast.Attribute):
        return [target]
    if isinstance(target, ast.Subscript):
        return _assigned_attributes(target.value)
    if isinstance(target, ast.Tuple | ast.List):
        return [a for t in target.elts for a in _assigned_attributes(t)]
    return []


def _self_attributes_by_class(path: Path) -> dict[str, set[str]]:
    """Class name -> attributes its methods assign on self."""
    out: dict[str, set[str]] = {}
    for cls in (n for n in _tree(path).body if isinstance(n, ast.ClassDef)):
        names = out.setdefault(cls.name, set())
        for node in ast.walk(cls):
            for target in _targets(node):
                names.update(a.attr for a in _assigned_attributes(target) if _is_self(a.value))
    return out


def test_slot_state_is_named_only_in_slots_py_on_self() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = _tree(path)
        owner = {
            id(node): cls.name
            for cls in ast.walk(tree)
            if isinstance(cls, ast.ClassDef)
            for node in ast.walk(cls)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in SLOT_STATE:
                where = f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node)}"
                if path != ENGINE / "slots.py" or not _is_self(node.value):
                    found.append(where)
                elif owner.get(id(node)) != "SlotPool":
                    found.append(where + " (outside SlotPool)")
    assert not found, "slot state touched outside SlotPool:\n" + "\n".join(found)
    # And SlotPool does own it (the scan above would pass vacuously after a rename).
    assert _self_attributes_by_class(ENGINE / "slots.py")["SlotPool"] >= SLOT_STATE


def test_no_engine_piece_touches_another_objects_private_attributes() -> None:
    found = [
        f"{path.name}:{node.lineno} {ast.unparse(node)}"
        for path in PIECES
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not _is_self(node.value)
    ]
    assert not found, "\n".join(found)


def test_no_engine_piece_assigns_another_pieces_attributes() -> None:
    owned: dict[str, str] = {}  # attribute -> the module whose class sets it on itself
    shared: set[str] = set()  # set by classes of two modules (each on itself): never from outside
    for path in PIECES:
        for names in _self_attributes_by_class(path).values():
            for name in names:
                if owned.setdefault(name, path.name) != path.name:
                    shared.add(name)
    found = []
    for path in PIECES:
        for node in ast.walk(_tree(path)):
            for target in _targets(node):
                for attr in _assigned_attributes(target):
                    if _is_self(attr.value) or attr.attr not in owned:
                        continue
                    if attr.attr in shared or owned[attr.attr] != path.name:
                        found.append(f"{path.name}:{node.lineno} {ast.unparse(target)}")
    assert not found, "pieces must change each other through calls:\n" + "\n".join(found)


def test_engine_imports_run_one_way() -> None:
    graph: dict[str, set[str]] = {}
    for path in ENGINE.glob("*.py"):
        deps = graph.setdefault(path.stem, set())
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[:2] == ["executor", "engine"] and len(parts) > 2:
                    deps.add(parts[2])
                elif node.module == "executor.engine":
                    deps.update(a.name for a in node.names)

    def visit(module: str, stack: tuple[str, ...]) -> None:
        assert module not in stack, f"import cycle: {' -> '.join((*stack, module))}"
        for dep in graph.get(module, ()):
            if dep != module:
                visit(dep, (*stack, module))

    for module in graph:
        visit(module, ())
    # engine.py wires everything; nothing imports it back.
    assert not any("engine" in deps for name, deps in graph.items() if name != "engine")
