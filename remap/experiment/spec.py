"""Experiment files: experiments/NAME.toml, loaded and checked into an :class:`Experiment`.

Why declarative: an experiment is data someone else must be able to read and re-run -- which
target, how it is launched, which steps, what is measured, how often -- so it lives in a TOML file,
and every mistake in it is one :class:`ExperimentError` line naming the file and the problem.

File shape (all tables optional except ``target``; ``cases`` override the top level)::

    description = "idle residency of the default bot"
    repeat = 3
    [target]   name = "minibot"  variant = "default"  args = []  irc = true
    [target]   source = "energymech"  variant = "static"  irc = "energymech"   # bring your own
    [target.recipe]  ...                   # optional: the recipe inline (remap.sources)
    [launch]   aslr = false  env_size = 256  vdso = true  user = "nobody"  netns = true
               env = { TZ = "UTC0" }   # added to the fixed environment (remap.launch)
    [measure]  pages = true  stack = true
    [[steps]]  step = "launch"
    [[steps]]  step = "register"
    [[steps]]  step = "ping"  n = 100
    [[cases]]  name = "aslr-on"  launch = { aslr = true }
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExperimentError
from ..targets import EXPERIMENTS_DIR  # the checkout's experiments/, or the bundled copy

_TOP_KEYS = {"description", "repeat", "target", "launch", "measure", "steps", "cases"}
_TARGET_KEYS = {"name", "variant", "args", "irc", "exit_status", "source", "recipe"}
_LAUNCH_KEYS = {"aslr", "env_size", "vdso", "user", "netns", "daemon", "env"}
BOTS = ("minibot", "energymech")  # irc = true means "minibot": HOST PORT NICK CHANNEL args
_MEASURE_KEYS = {"pages", "stack", "idle_timeout"}
_CASE_KEYS = {"name", "target", "launch", "measure", "steps"}
MAX_REPEAT = 10_000


@dataclass(frozen=True)
class Target:
    name: str
    variant: str = "default"
    args: tuple[str, ...] = ()
    irc: bool = False  # drive it with remap.ircd (append HOST PORT NICK CHANNEL to args)
    exit_status: int = 0  # what a working target exits with at the end (EOF / hang-up)
    source: str | None = None  # a bring-your-own target: csrc/recipes/SOURCE.toml (or recipe)
    recipe: dict | None = field(default=None, compare=False, hash=False)
    bot: str = "minibot"  # which bot the IRC server drives, and how (remap.energymech)


@dataclass(frozen=True)
class Launch:
    aslr: bool = True
    env_size: int | None = None
    vdso: bool = True
    user: str | None = None  # run as this unprivileged user
    netns: bool = False  # inside a private network namespace holding only loopback
    daemon: bool = False  # let a real bot daemonize (EnergyMech: no MECHRESET), adopt the child
    env: tuple[tuple[str, str], ...] = ()  # variables added to remap.launch.DEFAULT_ENV

    def environment(self) -> dict[str, str]:
        """The environment the target starts with: DEFAULT_ENV plus this case's variables."""
        from ..launch import DEFAULT_ENV

        return {**DEFAULT_ENV, **dict(self.env)}


@dataclass(frozen=True)
class Measure:
    pages: bool = False  # record every present page (address, label, backing) at each step
    stack: bool = False  # record remap.stacklayout at each step
    idle_timeout: float = 5.0  # seconds to wait for the target to block before measuring


@dataclass(frozen=True)
class Step:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One configuration of an experiment; each is run ``repeat`` times."""

    name: str
    target: Target
    launch: Launch
    measure: Measure
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Experiment:
    name: str
    path: Path
    description: str
    repeat: int
    cases: tuple[Case, ...]


def available() -> list[str]:
    """Names of the experiments shipped in experiments/."""
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.toml"))


def resolve(name: str) -> Path:
    """NAME (shipped experiment) or a path to a .toml file -> the file; ExperimentError if none."""
    try:
        return _resolve(name)
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, an unreadable directory
        raise ExperimentError(f"experiment {name[:80]!r}: cannot look it up ({e})") from None


def _resolve(name: str) -> Path:
    """A .toml path, a shipped experiment's name, or else any existing file the user named
    (load() then says why it is not an experiment file, not "unknown experiment")."""
    p = Path(name)
    if p.suffix == ".toml":
        if not p.is_file():
            raise ExperimentError(f"{p}: no such experiment file")
        return p
    shipped = EXPERIMENTS_DIR / f"{name}.toml"
    if "/" not in name and shipped.is_file():
        return shipped
    if p.is_file():
        return p
    known = ", ".join(available()) or "none"
    raise ExperimentError(f"unknown experiment {name!r} (known: {known})")


def load(name: str) -> Experiment:
    """Load and check an experiment by name or path."""
    path = resolve(name)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ExperimentError(f"{path}: not an experiment file: not valid TOML ({e})") from None
    except UnicodeDecodeError as e:
        raise ExperimentError(f"{path}: not an experiment file: not UTF-8 text ({e})") from None
    except OSError as e:
        raise ExperimentError(f"{path}: cannot read: {e}") from None
    if not _TOP_KEYS & set(data):  # nothing of an experiment at all (a mistake in one: parse)
        has = ", ".join(sorted(data)[:8]) or "nothing"
        raise ExperimentError(
            f"{path}: not an experiment file: valid TOML without a [target] table or any "
            f"other experiment key (it has: {has})"
        )
    return parse(data, path)


def parse(data: dict, path: Path) -> Experiment:
    """Check DATA (a parsed TOML document) against the shape above."""

    def bad(msg: str) -> ExperimentError:
        return ExperimentError(f"{path}: {msg}")

    _keys(data, _TOP_KEYS, "top level", bad)
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise bad("'description' must be a string")
    repeat = data.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= MAX_REPEAT:
        raise bad(f"'repeat' must be an integer 1..{MAX_REPEAT}, got {repeat!r}")
    base = {k: data.get(k) for k in ("target", "launch", "measure", "steps")}
    raw_cases = data.get("cases", [{"name": "default"}])
    if not isinstance(raw_cases, list) or not raw_cases:
        raise bad("'cases' must be a non-empty array of tables ([[cases]])")
    cases = []
    for i, rc in enumerate(raw_cases):
        if not isinstance(rc, dict):
            raise bad(f"cases[{i}] must be a table")
        _keys(rc, _CASE_KEYS, f"cases[{i}]", bad)
        cname = rc.get("name", f"case{i}")
        if not isinstance(cname, str) or not cname:
            raise bad(f"cases[{i}].name must be a non-empty string")
        where = f"case {cname!r}"
        target = _target(_merge(base["target"], rc.get("target"), where, "target", bad), where, bad)
        launch = _launch(_merge(base["launch"], rc.get("launch"), where, "launch", bad), where, bad)
        meas = _measure(
            _merge(base["measure"], rc.get("measure"), where, "measure", bad), where, bad
        )
        steps = _steps(rc.get("steps", base["steps"]), where, bad)
        cases.append(Case(cname, target, launch, meas, steps))
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise bad(f"case names repeat: {names}")
    return Experiment(path.stem, path, desc, repeat, tuple(cases))


def _keys(d: dict, allowed: set[str], where: str, bad) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise bad(f"unknown key(s) {', '.join(unknown)} in {where} (allowed: {sorted(allowed)})")


def _merge(base, over, where: str, what: str, bad) -> dict:
    for v, w in ((base, what), (over, f"{where}.{what}")):
        if v is not None and not isinstance(v, dict):
            raise bad(f"'{w}' must be a table")
    return {**(base or {}), **(over or {})}


def _target(d: dict, where: str, bad) -> Target:
    _keys(d, _TARGET_KEYS, f"{where}: target", bad)
    source, recipe = d.get("source"), d.get("recipe")
    if source is not None and (not isinstance(source, str) or not source):
        raise bad(f"{where}: target.source (a csrc/recipes/NAME.toml recipe) must be a name")
    if recipe is not None and (not isinstance(recipe, dict) or source is None):
        raise bad(f"{where}: target.recipe must be a table, beside target.source")
    name = d.get("name", source)
    if not isinstance(name, str) or not name:
        raise bad(f"{where}: target.name (the csrc/targets/NAME.c program) is required")
    variant = d.get("variant", "default")
    args = d.get("args", [])
    if not isinstance(variant, str):
        raise bad(f"{where}: target.variant must be a string")
    if not isinstance(args, list) or not all(isinstance(a, str | int) for a in args):
        raise bad(f"{where}: target.args must be an array of strings")
    irc = d.get("irc", False)
    if not isinstance(irc, bool) and irc not in BOTS:
        raise bad(f"{where}: target.irc must be true, false or one of {', '.join(BOTS)}")
    bot = irc if isinstance(irc, str) else "minibot"
    status = d.get("exit_status", 0)
    if not isinstance(status, int) or isinstance(status, bool) or not 0 <= status <= 255:
        raise bad(f"{where}: target.exit_status must be an integer 0..255")
    argv = tuple(str(a) for a in args)
    return Target(name, variant, argv, bool(irc), status, source, recipe, bot)


def _launch(d: dict, where: str, bad) -> Launch:
    _keys(d, _LAUNCH_KEYS, f"{where}: launch", bad)
    aslr, vdso, env_size = d.get("aslr", True), d.get("vdso", True), d.get("env_size")
    if not isinstance(aslr, bool) or not isinstance(vdso, bool):
        raise bad(f"{where}: launch.aslr and launch.vdso must be true or false")
    if env_size is not None and (
        not isinstance(env_size, int) or isinstance(env_size, bool) or not 0 <= env_size <= 1 << 20
    ):
        raise bad(f"{where}: launch.env_size must be an integer 0..1048576")
    user, netns = d.get("user"), d.get("netns", False)
    if user is not None and (not isinstance(user, str) or not user):
        raise bad(f"{where}: launch.user must be a user name")
    daemon = d.get("daemon", False)
    if not isinstance(netns, bool) or not isinstance(daemon, bool):
        raise bad(f"{where}: launch.netns and launch.daemon must be true or false")
    env = d.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
    ):
        raise bad(f'{where}: launch.env must be a table of NAME = "value" strings')
    return Launch(aslr, env_size, vdso, user, netns, daemon, tuple(sorted(env.items())))


def _measure(d: dict, where: str, bad) -> Measure:
    _keys(d, _MEASURE_KEYS, f"{where}: measure", bad)
    pages, stack = d.get("pages", False), d.get("stack", False)
    if not isinstance(pages, bool) or not isinstance(stack, bool):
        raise bad(f"{where}: measure.pages and measure.stack must be true or false")
    t = d.get("idle_timeout", 5.0)
    if not isinstance(t, int | float) or isinstance(t, bool) or not 0 < t <= 60:
        raise bad(f"{where}: measure.idle_timeout must be a number of seconds in (0, 60]")
    return Measure(pages, stack, float(t))


def _steps(raw, where: str, bad) -> tuple[Step, ...]:
    if not isinstance(raw, list) or not raw:
        raise bad(f"{where}: 'steps' must be a non-empty array of tables ([[steps]])")
    out = []
    for i, s in enumerate(raw):
        if not isinstance(s, dict) or not isinstance(s.get("step"), str):
            raise bad(f'{where}: steps[{i}] must be a table with step = "NAME"')
        params = {k: v for k, v in s.items() if k != "step"}
        out.append(Step(s["step"], params))
    if out[0].name != "launch" and not out[0].name.startswith("launch-"):  # launch-agetty...
        raise bad(f'{where}: the first step must be "launch" or "launch-..." (got {out[0].name!r})')
    return tuple(out)
