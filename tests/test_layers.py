"""Layers point one way: libraries (procfs ... fold, layout, profile, torture) never import the
experiment layer or the CLI, `import remap.layout` stays a light import, and every experiment
step that needs IRC refuses a target without it in the same words.

The static check reads the source of every module under remap/ with ast (module-level and
function-level imports alike: an import hidden inside a function is still a dependency), so a
new upward import fails here before it becomes a cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import remap
from remap import experiment as X
from remap.errors import ExperimentError

PKG = Path(remap.__file__).resolve().parent
UPPER = ("remap.experiment", "remap.cli")  # the layers a library must not import
# Modules that sit above the experiment layer by design, and may import it.
ABOVE = {
    "remap.__main__": "the entry point: runs the CLI",
    "remap.report": "reads the records experiments write (summarize)",
    "remap.kernels.matrix": "runs experiments inside a guest kernel",
    "remap.kernels.inguest": "the guest side of the matrix: runs the experiment",
}
# Known upward imports still to be removed, each with the reason (and whose file it is).
KNOWN: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every remap module MODULE's SOURCE imports (relative imports resolved), anywhere in it."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                head = base[: len(base) - node.level + 1]
                mod = ".".join(head + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # `from . import steps_fold`
    return {m for m in out if m == "remap" or m.startswith("remap.")}


def upward_imports(module: str, imported: set[str]) -> set[str]:
    """The imports of MODULE that point up: into the experiment layer or the CLI from below,
    into the CLI from the experiment layer."""
    if _under(module, "remap.cli") or module in ABOVE:
        return set()
    upper = ("remap.cli",) if _under(module, "remap.experiment") else UPPER
    return {m for m in imported if any(_under(m, u) for u in upper)}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def all_upward() -> dict[tuple[str, str], str]:
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        mod = module_name(path)
        imported = imports_of(path.read_text(), mod, path.name == "__init__.py")
        for up in upward_imports(mod, imported):
            top = up if up.count(".") < 2 else ".".join(up.split(".")[:3])
            found[(mod, top)] = f"{path.relative_to(PKG.parent)} imports {up}"
    return found


def test_no_library_module_imports_the_experiment_layer_or_the_cli():
    found = all_upward()
    unexpected = {k: v for k, v in found.items() if k not in KNOWN}
    assert unexpected == {}, "\n".join(unexpected.values())
    stale = set(KNOWN) - set(found)
    assert not stale, f"fixed, remove from KNOWN: {sorted(stale)}"


def test_the_static_check_catches_an_upward_import():
    # the forms an upward import takes, as a library module would write them
    for src in (
        "from ..experiment.steps import step\n",
        "def f():\n    from ..experiment import RunContext\n",
        "import remap.cli.common\n",
        "from .. import experiment\n",
    ):
        imported = imports_of(src, "remap.fold.plan")
        assert upward_imports("remap.fold.plan", imported), src
    assert not upward_imports(
        "remap.fold.plan", imports_of("from ..ircd import X\n", "remap.fold.plan")
    )
    # the experiment layer may import its own modules and the libraries, not the CLI
    src = "from .steps import step\nfrom ..fold import fold\n"
    assert not upward_imports("remap.experiment.steps_irc", imports_of(src, "remap.experiment.x"))
    src = "from ..cli.common import run\n"
    assert upward_imports("remap.experiment.runner", imports_of(src, "remap.experiment.runner"))


def _loaded_after(statement: str) -> list[str]:
    code = (
        f"{statement}; import sys; print(sorted(m for m in sys.modules if m.startswith('remap')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout.replace("'", '"'))


def test_import_layout_loads_no_ptrace_experiment_or_irc_module():
    loaded = _loaded_after("import remap.layout")
    assert "remap.layout" in loaded
    heavy = [m for m in loaded if m.startswith(("remap.inject", "remap.experiment", "remap.ircd"))]
    assert heavy == [], loaded
    assert "remap.profile" not in loaded and "remap.native" not in loaded


def test_libraries_load_no_experiment_module():
    loaded = _loaded_after(
        "import remap.fold, remap.layout, remap.profile, remap.torture, remap.residency, "
        "remap.launch, remap.energymech, remap.ircd"
    )
    assert {"remap.fold", "remap.torture", "remap.profile"} <= set(loaded)
    assert [m for m in loaded if m.startswith(UPPER)] == []


def test_experiment_import_leaves_the_heavy_steps_for_later():
    loaded = _loaded_after("import remap.experiment")
    assert "remap.experiment.steps_irc" in loaded  # registered with the runner
    assert not [m for m in loaded if m.startswith(("remap.inject", "remap.fold", "remap.profile"))]


IRC_STEPS = (
    "register",
    "ping",
    "command",
    "client-join",
    "pong",
    "client-check",
    "screen",
    "check-mem",
    "ping-watch",
    "auto-layout",
    "profile-layout",
)


@pytest.fixture(scope="module")
def no_irc_records(tmp_path_factory) -> dict[str, dict]:
    """One run per IRC step against echoloop, a target without IRC (launch, then the step)."""
    d = tmp_path_factory.mktemp("noirc")
    cases = "\n".join(
        f'[[cases]]\nname = "{s}"\nsteps = [{{ step = "launch" }}, {{ step = "{s}", '
        f'text = "!mem", n = 1 }}]\n'
        for s in IRC_STEPS
    )
    f = d / "noirc.toml"
    f.write_text(
        'description = "IRC steps on a target without IRC"\nrepeat = 1\n'
        '[target]\nname = "echoloop"\n[launch]\naslr = false\n' + cases
    )
    recs = X.run(X.load(str(f)), repeat=1, command="test")
    return {r["case"]: r for r in recs}


@pytest.mark.parametrize("name", IRC_STEPS)
def test_every_irc_step_refuses_a_target_without_irc_in_the_same_words(no_irc_records, name):
    r = no_irc_records[name]
    want = f"{ExperimentError.__name__}: step {name!r} needs an IRC target (target.irc = true)"
    assert r["error"] == want and r["target_ok"] is False
    assert [s["name"] for s in r["steps"]] == ["launch"]  # refused before touching the target
