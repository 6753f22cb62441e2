"""Task evaluations: what a user ships against, measured on each trial's model in-process.

A study file's ``[tasks.NAME]`` table declares one (:class:`TaskSpec`, read by
:func:`parse_tasks`): an lm-evaluation-harness task (a built-in name whose data is reachable,
or a local task YAML folder given as ``include_path``, which works offline) or a user Python
function ``FILE.py:function(model, tokenizer) -> dict[str, float]`` (a path the study file
names: it runs your code in the trial worker). ``NAME`` may then be one of
``[objectives].names`` (minimised or maximised as its ``goal`` says) and/or a constraint
(``max_relative_loss`` against the base model's score, or absolute ``at_least`` /
``at_most``). :mod:`autoslim.tasks.run` evaluates them.
"""

from __future__ import annotations

from autoslim.tasks.spec import TaskSpec, parse_tasks

__all__ = ["TaskSpec", "parse_tasks"]
