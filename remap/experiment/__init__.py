"""Declarative experiments: load experiments/NAME.toml, run it, write one JSON record per run.

Lifecycle: ``load`` (spec: TOML -> Experiment) -> ``run`` (runner: each case x repeat, steps
from the registry, a measurement after each step) -> records (DIR/NAME.jsonl) -> ``summarize``.
Steps register with ``@step("name")`` (remap.experiment.steps: the registry, RunContext, the
built-in steps); those of each subject live here too: steps_irc, steps_fold, steps_layout,
steps_torture.  Only this package (and the CLI) imports remap.experiment: the libraries it
drives (fold, layout, profile, torture, residency) know nothing of experiments.

Example::

    >>> from remap import experiment
    >>> exp = experiment.load("baseline-minibot")
    >>> recs = experiment.run(exp, repeat=1)
    >>> recs[0]["final_rss_kb"], recs[0]["target_ok"]
    (24, True)
"""

from __future__ import annotations

from .runner import comparable, run, summarize
from .spec import Experiment, available, load
from .steps import STEPS, RunContext, StepResult, step

__all__ = [
    "STEPS",
    "Experiment",
    "RunContext",
    "StepResult",
    "available",
    "comparable",
    "load",
    "run",
    "step",
    "summarize",
]
