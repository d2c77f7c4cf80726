"""The package's shape, as docs/design.md states it: each part imports only the layers below it,
none reaches into another's private names, and no file grows past what a reader takes in at once."""
import ast
from pathlib import Path

import gyges

PACKAGE = Path(gyges.__file__).parent
# bottom to top: a part may import the parts before it, never one after it
LAYERS = ["protocol", "heap", "kernels", "model", "memory", "layers", "engine", "transform", "policy", "worker",
          "cluster", "bench", "sim", "server", "cli"]
MAX_LINES = 450


def part_of(module: str) -> str:
    return module.split(".")[1]


def modules() -> dict[Path, ast.Module]:
    return {f: ast.parse(f.read_text()) for f in sorted(PACKAGE.rglob("*.py"))}


def imports_by_part() -> dict[str, dict[str, list[str]]]:
    """part -> imported part -> the files that import it (imports inside functions included)."""
    out: dict[str, dict[str, list[str]]] = {}
    for f, tree in modules().items():
        rel = f.relative_to(PACKAGE)
        me = rel.parts[0].removesuffix(".py")
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gyges."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("gyges.")]
            for name in names:
                if part_of(name) != me:
                    out.setdefault(me, {}).setdefault(part_of(name), []).append(str(rel))
    return out


def test_every_part_is_placed_in_the_layer_order():
    parts = {(f.relative_to(PACKAGE).parts[0]).removesuffix(".py") for f in PACKAGE.rglob("*.py")} - {"__init__"}
    assert parts == set(LAYERS)


def test_parts_import_only_the_layers_below_them():
    upward = [f"{me} imports {other} ({', '.join(sorted(set(files)))})"
              for me, deps in imports_by_part().items() for other, files in deps.items()
              if LAYERS.index(other) > LAYERS.index(me)]
    assert not upward


def test_the_rules_the_layers_exist_for():
    deps = imports_by_part()
    assert "protocol" not in deps, "the device protocol imports no other part of gyges"
    assert not set(deps.get("policy", {})) & {"cluster", "worker", "server", "sim"}, "the policy is pure"
    assert "cluster" not in deps.get("worker", {}), "devices know nothing of the controller"
    assert "server" not in deps.get("sim", {})


def test_no_cycle_between_parts():
    deps = {me: set(d) for me, d in imports_by_part().items()}
    seen, done = set(), set()

    def visit(part, path):
        assert part not in seen - done, f"import cycle: {' -> '.join(path + [part])}"
        if part in done:
            return
        seen.add(part)
        for other in deps.get(part, ()):
            visit(other, path + [part])
        done.add(part)

    for part in deps:
        visit(part, [])


def test_no_private_name_is_used_outside_its_own_object():
    """No `from gyges.x import _name`, and no `obj._attr` where obj is not self, cls or super()."""
    found = []
    for f, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gyges"):
                found += [f"{f}:{node.lineno}: imports {a.name}" for a in node.names if _private(a.name)]
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                    continue
                found.append(f"{f}:{node.lineno}: {ast.unparse(node)}")
    assert not found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_file_is_longer_than_a_reader_takes_in():
    long = {str(f.relative_to(PACKAGE)): n for f in PACKAGE.rglob("*.py") if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long
