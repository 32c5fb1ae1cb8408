"""Progress on stderr: a rich bar on a terminal, plain lines elsewhere, nothing with --quiet."""

from __future__ import annotations

import sys
import time

import numpy as np

from diffdiff_cli.plan import Evaluation, Plan, free_share


class Reporter:
    """Tells people what is happening. Data for programs goes to stdout elsewhere, never here."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.animated = not quiet and self.stream.isatty()

    def notice(self, message: str) -> None:
        if not self.quiet:
            print(f"diffdiff: {message}", file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        print(f"diffdiff: warning: {message}", file=self.stream, flush=True)

    def sampling(self, label: str, plan: Plan, change_latent: np.ndarray) -> "StepProgress":
        return StepProgress(self, label, plan, change_latent)


class StepProgress:
    """Per-image progress counted in real sampler steps (an order-2 step's two evaluations are one step)."""

    def __init__(self, reporter: Reporter, label: str, plan: Plan, change_latent: np.ndarray):
        self.reporter, self.label, self.plan, self.change = reporter, label, plan, change_latent
        self._progress = None
        self._task = None
        self._last_plain = -1
        self.started = time.monotonic()

    def __enter__(self):
        if self.reporter.animated:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.reporter.stream),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.plan.steps, detail="")
        return self

    def __call__(self, evaluation: Evaluation) -> None:
        share = free_share(self.change, evaluation.threshold)
        last = evaluation.index == len(self.plan.evaluations) - 1
        next_step = last or self.plan.evaluations[evaluation.index + 1].step != evaluation.step
        done = evaluation.step + 1 if next_step else evaluation.step
        detail = f"t={evaluation.timestep:.1f} τ={evaluation.threshold:.3f} free {share:5.1%}"
        if self._progress is not None:
            self._progress.update(self._task, completed=done, detail=detail)
        elif not self.reporter.quiet and next_step:
            tenth = done * 10 // self.plan.steps
            if tenth > self._last_plain or last:
                self._last_plain = tenth
                print(f"{self.label}: step {done}/{self.plan.steps} {detail}", file=self.reporter.stream, flush=True)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False
