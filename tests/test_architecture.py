"""The dependency rules of the package, read from every module's imports (ast, function bodies included).

Stages: `sdm.core` (shared mechanisms) <- `sdm.pretrained` <- `sdm.calibration` <- `sdm.converter`
<- `sdm.eval`, and `sdm.cli` on top. Inside a stage, sub-packages have directions of their own
(SUBPACKAGE_ORDER): the spiking runtime knows nothing of conversion, fine-tuning or export, and
so on. Library modules import each other relatively, so every import resolves to a file of the
checkout (a static tool can follow it), and no two modules import each other, even indirectly. A CLI module is a module of the `sdm.cli` package or one of
the thin entry points kept runnable as scripts (`python eval/compare.py`, `python -m
sdm.eval.reference_stats`); it may import any stage. Every other module is a library module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The package `sdm` is the repository root (its __init__.py); its sub-packages are the stage folders.
PACKAGE_DIRS = {"sdm.cli": ROOT / "cli", "sdm.core": ROOT / "core", "sdm.pretrained": ROOT / "pretrained",
                "sdm.calibration": ROOT / "calibration", "sdm.converter": ROOT / "converter", "sdm.eval": ROOT / "eval"}
ENTRY_POINTS = {"sdm.eval.compare", "sdm.eval.sweep", "sdm.eval.bench", "sdm.eval.reference_stats",
                "sdm.eval.neuron_table"}
# (importing stage, imported stage): why it is forbidden.
FORBIDDEN = {
    ("pretrained", "converter"): "source models know nothing of conversion",
    ("pretrained", "calibration"): "source models know nothing of calibration",
    ("calibration", "converter"): "statistics of the ANN do not depend on the SNN",
    ("calibration", "eval"): "calibration does not measure",
    ("converter", "eval"): "the converter does not measure (the CLI layer composes both)",
    **{("core", stage): "core is the base every stage builds on"
       for stage in ("pretrained", "calibration", "converter", "eval", "cli")},
}
# Within a stage: a sub-package (None: the stage's own top-level modules) may import only those listed.
SUBPACKAGE_ORDER = {
    "converter": {"spiking": set(), None: {"spiking"}, "finetune": {None, "spiking"}, "export": {"spiking"}},
    "eval": {"metrics": set(), "runs": {"metrics"}, "reports": {None, "metrics", "runs"}},
}
# Imports that break a rule today, each with the change that removes it (none left).
PENDING: dict[tuple[str, str], str] = {}
# Stages whose tests mirror the package layout, one test file per module (issue #26).
MIRRORED_STAGES = ("converter",)
TESTS = ROOT / "tests"


def modules() -> dict[str, Path]:
    found = {"sdm": ROOT / "__init__.py"}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def is_cli(module: str) -> bool:
    return module == "sdm.cli" or module.startswith("sdm.cli.") or module in ENTRY_POINTS


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "sdm" else None


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def module_name(path: Path) -> str:
    return next(name for name, found in ALL.items() if found == path) if path in ALL.values() else "sdm.sample"


def absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module a (possibly relative) `from X import` names, as an absolute dotted name."""
    if node.level == 0:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def project_imports(path: Path, typing_too: bool = False) -> list[tuple[str, int, bool]]:
    """(imported sdm module, line, inside a function) for every import of the file, relative ones
    resolved; imports under TYPE_CHECKING only with `typing_too`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = _type_checking_lines(tree)
    local: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    local.add(child.lineno)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = absolute(node, module_name(path), path.name == "__init__.py")
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        if node.lineno in typing_only and not typing_too:
            continue
        for name in names:
            if name == "sdm" or name.startswith("sdm."):
                found.append((name, node.lineno, node.lineno in local))
    return found


ALL = modules()


def mirrored_test_file(path: Path) -> Path:
    """Where the tests of the module at `path` live: tests/<its folder>/test_<its name>.py."""
    relative = path.relative_to(ROOT)
    return TESTS / relative.parent / f"test_{relative.name}"


def existing(name: str) -> str | None:
    """`name` or its longest prefix that is a module of the package (`a.b.func` -> `a.b`)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in ALL:
        parts.pop()
    return ".".join(parts) or None


def subpackage(module: str) -> str | None:
    """The sub-package of its stage a module lives in (None: a top-level module of the stage)."""
    parts = module.split(".")
    path = ALL.get(module)
    depth = 3 if path is not None and path.name != "__init__.py" else 2
    return parts[2] if len(parts) > depth else None


def test_every_stage_is_found():
    assert {stage(m) for m in ALL} >= {"core", "pretrained", "calibration", "converter", "eval", "cli"}
    assert len(ALL) > 50


@pytest.mark.parametrize("module", sorted(m for m in ALL if not is_cli(m)))
def test_library_module_respects_the_dependency_rules(module):
    broken = []
    for imported, line, _ in project_imports(ALL[module]):
        if (module, ".".join(imported.split(".")[:3])) in PENDING:
            continue
        if is_cli(imported):
            broken.append(f"line {line}: {imported} (a library module never imports a CLI module)")
        rule = FORBIDDEN.get((stage(module), stage(imported)))
        if rule:
            broken.append(f"line {line}: {imported} ({rule})")
    assert not broken, f"{module}: " + "; ".join(broken)


@pytest.mark.parametrize("module", sorted(m for m in ALL if not is_cli(m)))
def test_library_module_respects_its_stage_inner_order(module):
    allowed = SUBPACKAGE_ORDER.get(stage(module))
    if allowed is None:
        return
    broken = []
    for imported, line, _ in project_imports(ALL[module]):
        target = existing(imported)
        if target is None or stage(target) != stage(module) or target in (f"sdm.{stage(module)}",):
            continue
        mine, theirs = subpackage(module), subpackage(target)
        if theirs != mine and theirs not in allowed[mine]:
            broken.append(f"line {line}: {target} ({stage(module)}/{mine or '.'} may import only {sorted(map(str, allowed[mine]))})")
    assert not broken, f"{module}: " + "; ".join(broken)


@pytest.mark.parametrize("module", sorted(m for m in ALL if not is_cli(m) or m.startswith("sdm.cli")))
def test_package_imports_are_relative(module):
    """An absolute `sdm.` import names no file of the checkout; a relative one does."""
    tree = ast.parse(ALL[module].read_text())
    absolute_ones = [f"line {n.lineno}" for n in ast.walk(tree)
                     if (isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module or "").split(".")[0] == "sdm")
                     or (isinstance(n, ast.Import) and any(a.name.split(".")[0] == "sdm" for a in n.names))]
    assert not absolute_ones, f"{module}: absolute sdm imports at {absolute_ones}"


def test_relative_imports_resolve_to_files_of_the_checkout():
    for module, path in ALL.items():
        for imported, line, _ in project_imports(path, typing_too=True):
            assert existing(imported) is not None, f"{module} line {line}: {imported} names no file"


def test_no_import_cycles():
    """Not even through TYPE_CHECKING imports: a reader (or a tool) sees those too."""
    graph = {m: {t for name, _, _ in project_imports(p, typing_too=True)
                 if (t := existing(name)) and t != m and ALL[t].name != "__init__.py"} for m, p in ALL.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]) if nxt in trail else nxt
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_no_folder_holds_more_than_twelve_python_files():
    crowded = {str(folder.relative_to(ROOT)): n for folder in [ROOT, *ROOT.rglob("*")]
               if folder.is_dir() and ".git" not in folder.parts and "__pycache__" not in folder.parts
               and (n := len(list(folder.glob("*.py")))) > 12}
    assert not crowded, crowded


@pytest.mark.parametrize("module", sorted(m for m in ALL if not is_cli(m)))
def test_library_imports_sit_at_the_module_top(module):
    """Only CLI modules defer project imports (heavy libraries after parsing, for a fast --help)."""
    local = [f"line {line}: {name}" for name, line, inside in project_imports(ALL[module]) if inside]
    assert not local, f"{module} imports inside functions: {local}"


def test_pending_exceptions_are_still_needed():
    """An exception that no longer breaks a rule must be deleted from PENDING."""
    for module, imported in PENDING:
        assert any(name.startswith(imported) for name, _, _ in project_imports(ALL[module])), (module, imported)


@pytest.mark.parametrize("module", sorted(m for m in ALL if stage(m) in MIRRORED_STAGES and ALL[m].name != "__init__.py"))
def test_module_has_a_test_file_of_its_own(module):
    """Tests mirror the package layout: a module's tests are found from its path alone, and a new
    module without tests shows here instead of hiding in another module's file."""
    expected = mirrored_test_file(ALL[module])
    assert expected.is_file(), f"{module} has no {expected.relative_to(ROOT)}"


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_script_entry_points_are_thin(module):
    """`python eval/compare.py` and friends only hand over to the CLI layer."""
    tree = ast.parse(ALL[module].read_text())
    imports = [name for name, _, _ in project_imports(ALL[module])]
    assert imports and all(name.startswith("sdm.cli.") for name in imports), imports
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "Import", "ImportFrom", "If"}, kinds


def test_the_detector_sees_a_forbidden_import_inside_a_function(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from sdm.eval.runs.paired import psnr\n")
    assert project_imports(sample) == [("sdm.eval.runs.paired", 2, True), ("sdm.eval.runs.paired.psnr", 2, True)]


def test_cli_modules_import_no_heavy_library():
    """--help stays fast: importing any command module loads neither torch nor diffusers."""
    names = sorted(m for m in ALL if is_cli(m) and m not in ENTRY_POINTS)
    code = ("import sys\n" + "".join(f"import {name}\n" for name in names)
            + "heavy = sorted(m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules)\nprint(heavy)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
