"""Progress on stderr: rich bars on a terminal, plain lines elsewhere, nothing with --quiet."""

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
        self._live = None  # the rich Progress a batch shares with its per-image bars
        self._warned: set[str] = set()

    def notice(self, message: str) -> None:
        if not self.quiet:
            self._print(f"diffdiff: {message}")

    def warn(self, message: str) -> None:
        """Each distinct warning once per run: a batch of a thousand images does not repeat itself."""
        if message not in self._warned:
            self._warned.add(message)
            self._print(f"diffdiff: warning: {message}")

    def result(self, message: str) -> None:
        """What was written and with which seed: printed even with --quiet."""
        self._print(f"diffdiff: {message}")

    def _print(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def _new_progress(self, *columns):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
        )
        progress.start()
        return progress

    def batch(self, total: int) -> "BatchProgress":
        return BatchProgress(self, total)

    def sampling(self, label: str, plan: Plan, change_latent: np.ndarray) -> "StepProgress":
        return StepProgress(self, label, plan, change_latent)


class BatchProgress:
    """The overall bar (images done, ETA) above the per-image step bar."""

    def __init__(self, reporter: Reporter, total: int):
        self.reporter, self.total, self.count = reporter, total, 0
        self._task = None
        self._owner = False

    def __enter__(self):
        if self.reporter.animated and self.total > 1:
            self.reporter._live = self.reporter._new_progress()
            self._owner = True
            self._task = self.reporter._live.add_task("images", total=self.total, detail="")
        return self

    def advance(self, job) -> None:
        self.count += 1
        if self._task is not None:
            self.reporter._live.update(self._task, completed=self.count, detail=f"last: {job.input} {job.status}")
        elif not self.reporter.quiet and self.total > 1:
            print(
                f"diffdiff: [{self.count}/{self.total}] {job.input}: {job.status} ({job.seconds:.1f} s)",
                file=self.reporter.stream,
                flush=True,
            )

    def __exit__(self, *exc):
        if self._owner:
            self.reporter._live.stop()
            self.reporter._live = None
        return False


def warm_up_evaluations(plan: Plan) -> set[int]:
    """Evaluations that are no step the user asked for: PLMS (PNDM) makes one extra evaluation to start its
    multistep history (its timesteps repeat one value), so `--steps 20` makes 21 evaluations; the first is
    shown as the warm-up. Order-2 samplers (Heun, KDPM2) evaluate twice a step on purpose; those are
    counted as evaluations of their step instead."""
    evaluations = plan.evaluations
    if len({e.step for e in evaluations}) < len(evaluations):  # several evaluations a step: order 2
        return set()
    repeats = any(evaluations[i].timestep == evaluations[i - 1].timestep for i in range(1, len(evaluations)))
    return {0} if repeats else set()


class StepProgress:
    """Per-image progress in the sampler steps the user asked for: an order-2 step's two evaluations are one
    step (the evaluation count is shown beside it), a PLMS warm-up evaluation is shown as a warm-up."""

    def __init__(self, reporter: Reporter, label: str, plan: Plan, change_latent: np.ndarray):
        self.reporter, self.label, self.plan, self.change = reporter, label, plan, change_latent
        self._progress = None
        self._own_progress = False
        self._task = None
        self._last_plain = -1
        self.started = time.monotonic()
        self.warm_ups = warm_up_evaluations(plan)
        self.total = plan.steps - len(self.warm_ups)
        self.evaluations = len(plan.evaluations)

    def __enter__(self):
        if self.reporter.animated:
            self._progress = self.reporter._live
            if self._progress is None:
                self._progress = self.reporter._new_progress()
                self._own_progress = True
            self._task = self._progress.add_task(self.label, total=self.total, detail="")
        return self

    def __call__(self, evaluation: Evaluation) -> None:
        if self.reporter.quiet:
            return
        last = evaluation.index == len(self.plan.evaluations) - 1
        next_step = last or self.plan.evaluations[evaluation.index + 1].step != evaluation.step
        warm_ups_so_far = sum(1 for i in self.warm_ups if i <= evaluation.index)
        done = (evaluation.step + 1 if next_step else evaluation.step) - warm_ups_so_far
        share = free_share(self.change, evaluation.threshold)
        detail = f"t={evaluation.timestep:.1f} τ={evaluation.threshold:.3f} free {share:5.1%}"
        if self.evaluations != self.total:
            detail = f"evaluation {evaluation.index + 1}/{self.evaluations} {detail}"
        if self._progress is not None:
            self._progress.update(self._task, completed=done, detail=detail)
        elif evaluation.index in self.warm_ups:
            print(f"{self.label}: warm-up (PLMS starts its history, not a step) {detail}", file=self.reporter.stream, flush=True)
        elif next_step:
            tenth = done * 10 // max(self.total, 1)
            if tenth > self._last_plain or last:
                self._last_plain = tenth
                print(f"{self.label}: step {done}/{self.total} {detail}", file=self.reporter.stream, flush=True)

    def __exit__(self, *exc):
        if self._progress is not None:
            if self._own_progress:
                self._progress.stop()
            else:
                self._progress.remove_task(self._task)
        return False
