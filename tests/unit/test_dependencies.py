"""The project's packaging: every imported library is a listed dependency and every listed one is
used, and pyproject.toml installs every module at the top level (nothing patches sys.path)."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
TOP_LEVEL = {name.split(".")[0] for name in SETUPTOOLS["packages"]}
FIRST_PARTY = {*SETUPTOOLS["py-modules"], *TOP_LEVEL, "benchmarks", "scripts", "tests"}
# Listed but used through another library rather than imported.
INDIRECT = {
    "tensorboard": "clu's summary writer writes TensorBoard files",
    "array-record": "TFDS reads ArrayRecord datasets through it",
}
# Imported only where installed, by tests and benchmarks that skip or say so without them; the
# fixture export scripts and timm's benchmark side run in a separate torch environment.
OPTIONAL = {"torch", "timm", "pycls"}
# Runtime imports that only ahead-of-time TPU compiles make, from the `tpu` extra (jax[tpu]) or
# the `test` extra; without them training/tpu_slices.py says what to install.
EXTRA_ONLY = {"libtpu"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(lines) -> set[str]:
    names = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(normalize(re.match(r"[A-Za-z0-9_.-]+", line).group()))
    return names


def module_imports(path: Path):
    """The modules of `path`'s absolute imports."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def imported_modules(paths) -> set[str]:
    """Top-level names of the third-party libraries `paths`' Python files import."""
    names = {module.split(".")[0] for path in paths for module in module_imports(path)}
    return names - set(sys.stdlib_module_names) - FIRST_PARTY - {"__future__"}


def distributions(modules) -> dict[str, set[str]]:
    """Module -> the installed distributions that provide it."""
    provided = importlib.metadata.packages_distributions()
    return {m: {normalize(d) for d in provided.get(m, ())} for m in modules}


def python_files(*names):
    for name in names:
        path = REPO / name
        yield from ([path] if path.suffix == ".py" else sorted(path.rglob("*.py")))


def runtime_files():
    return python_files(*(f"{m}.py" for m in SETUPTOOLS["py-modules"]), *TOP_LEVEL)


def test_every_runtime_import_is_listed_and_every_listed_library_is_used():
    listed = requirement_names((REPO / "requirements.txt").read_text().splitlines())
    used = distributions(imported_modules(runtime_files()) - EXTRA_ONLY)
    unlisted = {m: d for m, d in used.items() if not d & listed}
    assert not unlisted, f"imported but not in requirements.txt: {unlisted}"
    unused = listed - set().union(*used.values()) - set(INDIRECT)
    assert not unused, f"in requirements.txt but never imported: {sorted(unused)}"


def test_test_and_benchmark_imports_are_listed():
    listed = requirement_names((REPO / "requirements.txt").read_text().splitlines())
    listed |= requirement_names(PYPROJECT["project"]["optional-dependencies"]["test"])
    modules = imported_modules(python_files("tests", "benchmarks", "scripts")) - OPTIONAL
    unlisted = {m: d for m, d in distributions(modules).items() if not d & listed}
    assert not unlisted, f"imported by tests or benchmarks but not listed: {unlisted}"


def test_pyproject_installs_every_top_level_module():
    """`pip install -e .` must make every root module importable: a module left out would only
    import from the checkout's root, which is what the sys.path patches used to paper over."""
    root_modules = {p.stem for p in REPO.glob("*.py")}
    root_packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    not_installed = {"benchmarks", "scripts", "tests"}  # run from the checkout
    assert set(SETUPTOOLS["py-modules"]) == root_modules
    assert TOP_LEVEL == root_packages - not_installed


def test_no_file_patches_sys_path():
    files = [*runtime_files(), *python_files("tests", "benchmarks", "scripts")]
    patched = [str(p.relative_to(REPO)) for p in files
               if "sys.path.insert" in p.read_text() and p != Path(__file__).resolve()]
    assert not patched


# What each top-level name may import of the project: lower layers never import higher ones (the
# models never import training code; the registry finds the families by name at run time).
FAMILIES = {"nfnets", "convnext", "vit"}
MAY_IMPORT = {
    "modeling": set(),
    **{family: {"modeling"} for family in FAMILIES},
    "imagedata": set(),
    "training": {"modeling", "imagedata", *FAMILIES},
    "input_pipeline": {"imagedata"},
    "configs": {"modeling", "imagedata", "training", *FAMILIES},  # what they configure
    "scaling": {"modeling", "training"},  # MAC counts, peak FLOP/s, metrics.jsonl
    "train": {"modeling", "imagedata", "training", "input_pipeline"},
}


def test_nothing_imports_upwards():
    project = set(MAY_IMPORT)
    for top, allowed in MAY_IMPORT.items():
        files = python_files(f"{top}.py" if (REPO / f"{top}.py").exists() else top)
        imported = {m.split(".")[0] for path in files for m in module_imports(path)}
        assert (imported & project) - {top} <= allowed, top


def test_extra_only_imports_are_in_the_test_extra():
    listed = requirement_names(PYPROJECT["project"]["optional-dependencies"]["test"])
    assert {normalize(m) for m in EXTRA_ONLY} <= listed
