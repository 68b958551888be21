"""The package's layout: no import cycles, no imports hidden in functions, the library apart from the course.

The import graph is read from the source with `ast` (every ``import`` and ``from ... import`` statement, at
any depth), so a cycle is caught even where Python would happen to survive it.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import diffedu

PACKAGE = Path(diffedu.__file__).resolve().parent
OPTIONAL = ("transformers", "diffusers", "playwright")  # may be imported where they are used, not at the top
FRONT_DOOR = {"diffedu", "diffedu._old_paths"}  # the package itself: re-exports `start`, finds old import paths


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(imported module, statement, inside a function?) for every import statement of the file."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_main_block(child):  # runs only as the script `__main__`, a module apart from this one
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative import
                    package = _module_name(path).split(".")
                    package = package if path.name == "__init__.py" else package[:-1]
                    base = ".".join(package[: len(package) - child.level + 1] + ([base] if base else []))
                for alias in child.names:  # `from pkg import module` imports the module
                    target = f"{base}.{alias.name}"
                    found.append((target if target in MODULES else base, child, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text()), False)
    return found


def _is_main_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``"""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__" and isinstance(node.test.comparators[0], ast.Constant)
            and node.test.comparators[0].value == "__main__")


GRAPH = {name: sorted({target for target, _, _ in _imports(path) if target in MODULES and target != name})
         for name, path in MODULES.items()}


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in GRAPH[module]:
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in MODULES:
        if module not in state:
            walk(module)


def test_a_cycle_would_be_found(tmp_path, monkeypatch):
    """The walk above really finds a cycle: a graph with one fails it."""
    monkeypatch.setitem(GRAPH, "diffedu.schedules", [*GRAPH["diffedu.schedules"], "diffedu.losses"])
    with pytest.raises(pytest.fail.Exception, match="import cycle: .*diffedu.losses"):
        test_the_import_graph_has_no_cycle()


def test_no_import_hides_in_a_function():
    hidden = [f"{name}:{stmt.lineno} imports {target}" for name, path in MODULES.items()
              for target, stmt, in_function in _imports(path)
              if in_function and target.split(".")[0] not in OPTIONAL]
    assert not hidden, "imports inside functions (move them to the top of the module): " + "; ".join(hidden)


def test_the_library_never_imports_the_course():
    library = [name for name in MODULES if not name.startswith("diffedu.course") and name not in FRONT_DOOR]
    assert "diffedu.train" in library and "diffedu.models.unet" in library
    wrong = [f"{name} imports {target}" for name in library for target in GRAPH[name]
             if target.startswith("diffedu.course")]
    assert not wrong, "the learner's library must not import the course machinery: " + "; ".join(wrong)


def test_every_module_imports_in_a_fresh_interpreter():
    """Imported one after another in dependency order, each module loads (a cycle Python cannot resolve fails)."""
    order: list[str] = []

    def visit(module: str) -> None:
        if module not in order:
            for target in GRAPH[module]:
                visit(target)
            order.append(module)

    for module in MODULES:
        visit(module)
    code = "import importlib\nfor name in %r:\n    importlib.import_module(name)\nprint('ok', len(%r))" % (order, order)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")


def test_old_import_paths_still_work():
    """Saved notebooks from before the move import the same modules by their old names."""
    code = """
import diffedu.models.unet as new
from diffedu.unet import UNet, mnist_small
from diffedu import checks, checks_vae, plotting
from diffedu.profiles import cpu_has_bf16, default_device
from diffedu.train import TrainConfig, atomic_save, ema_update, load_checkpoint, make_ema
import diffedu.unet as old
assert old is new and UNet is new.UNet and old.__spec__.name == "diffedu.models.unet"
assert checks.check_q_sample and checks_vae.check_kl_divergence and plotting.show_images
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_unknown_names_are_still_refused():
    with pytest.raises(ModuleNotFoundError):
        __import__("diffedu.no_such_module")


def test_the_old_lesson_command_still_runs():
    """`python -m diffedu.lessons --check` (the command before the move) runs diffedu.course.lessons."""
    done = subprocess.run([sys.executable, "-m", "diffedu.lessons", "--check"], capture_output=True, text=True,
                          timeout=300, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-2000:]


def test_the_training_command_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "diffedu.train", "--help"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--dataset" in done.stdout and "--export" in done.stdout


@pytest.mark.parametrize("script", sorted((PACKAGE.parent / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_every_benchmark_script_imports(script):
    """The benchmarks are not run by the tests, but their imports must follow the library."""
    code = (f"import importlib.util, sys; sys.path.insert(0, {str(script.parent)!r}); "
            f"spec = importlib.util.spec_from_file_location('bench', {str(script)!r}); "
            f"spec.loader.exec_module(importlib.util.module_from_spec(spec))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
