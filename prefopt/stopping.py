"""Stopping training early without losing or publishing anything: at the first non-finite loss or gradient norm, and
on SIGTERM or SIGINT.

transformers' Trainer counts a non-finite loss as the mean of the steps before it (`logging_nan_inf_filter`), so a
diverging run logged a loss of 0 and trained on with NaN weights, saving them as checkpoints. Here the processes check
every optimizer step together, before it is logged or saved: at the first step whose loss (on any process) or gradient
norm is not finite, every process stops, the main process reports the step in one line, and the run exits with status
2. The checkpoints saved before that step are the run's last good state; nothing is merged.

A scheduler preempting a job sends SIGTERM, then SIGKILL after a grace period (30 s by default in SLURM and
Kubernetes). On SIGTERM or SIGINT during training, the run finishes the optimizer step in progress, skips that step's
evaluation, saves a checkpoint of it, says how to resume, and exits with status 128 + the signal's number. Further
signals change nothing: torch's launcher passes its own SIGTERM on to processes that may have had one already. A
SIGKILL before the save is done leaves the checkpoints before it whole (`prefopt.checkpoints`).

transformers' own `enable_jit_checkpoint` is not used: each process decides alone when to save, at one of four points
of a step, so the processes of one run can save different steps; and after its save `train()` returns as if training
had ended, so the script would go on to merge a partly trained model.
"""

import logging
import math
import os
import signal

import torch
from accelerate.utils import gather_object
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from prefopt.errors import UserError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

logger = logging.getLogger(__name__)


class SafeStops:
    """A Trainer mixin: training stops at the first non-finite loss or gradient norm, and on SIGTERM or SIGINT after
    saving a checkpoint; in both cases `train()` does not return, so nothing after it (saving, merging) runs.

    The processes agree at the end of each optimizer step with accelerate's `set_trigger`/`check_trigger`, one
    all-reduce of a single number each.
    """

    def train(self, *args, **kwargs):
        self._step_loss = torch.zeros((), device=self.args.device)  # this process's loss of the step in progress
        self._received = None  # the first stop signal this process received
        self._not_finite = None  # the line saying which step was not finite, once the processes agreed on it
        self._stop_signal = None  # the signal the processes agreed to stop on
        previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            output = super().train(*args, **kwargs)  # ends as usual: progress bar closed, trackers finished
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self._not_finite is not None:
            raise UserError(self._not_finite, every_process=True)
        if self._stop_signal is not None:
            self._exit_after_signal()
        if self._received is not None:  # it came after the last step was checked: as it would have without us
            signal.raise_signal(self._received)
        return output

    def training_step(self, *args, **kwargs) -> torch.Tensor:
        loss = super().training_step(*args, **kwargs)
        self._step_loss = self._step_loss + loss  # non-finite if any micro-batch's loss was; no device sync
        return loss

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs) -> None:
        # Called at the end of each optimizer step (and of each epoch), before the step is logged, evaluated or saved.
        if self._not_finite is None:
            self._stop_if_not_finite(grad_norm)
        if self._not_finite is not None:  # neither this step nor the end of its epoch is logged or saved
            self.control.should_training_stop = True
            return
        self._stop_if_signalled()
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _on_signal(self, signum: int, frame) -> None:
        if self._received is None:
            self._received = signum

    def _stop_if_not_finite(self, grad_norm) -> None:
        loss, self._step_loss = self._step_loss, torch.zeros_like(self._step_loss)
        norm = None if grad_norm is None else float(grad_norm)
        # With fp16, accelerate's loss scaler skips a step whose gradients overflowed and lowers its scale: the
        # weights stay finite, and the next steps go on at the lower scale.
        norm_bad = norm is not None and not math.isfinite(norm) and not self.accelerator.optimizer_step_was_skipped
        if norm_bad or not torch.isfinite(loss):
            self.accelerator.set_trigger()
        if not self.accelerator.check_trigger():
            return
        losses = self.accelerator.gather(loss.reshape(1))
        not_finite = losses[~torch.isfinite(losses)]
        shown_loss = float(not_finite[0] if len(not_finite) else losses.mean())
        step = self.state.global_step
        shown_norm = "not computed" if norm is None else f"{norm:.4g}"
        self._not_finite = (
            f"training stopped at step {step}: loss {shown_loss:.4g}, gradient norm {shown_norm}; a loss or gradient "
            f"norm that is not a finite number usually comes from a learning rate too high (here "
            f"{self.args.learning_rate:g}), fp16 overflow (train in bf16 or float32 instead) or bad data; the "
            f"checkpoints saved before step {step} are kept, and nothing was merged"
        )

    def _stop_if_signalled(self) -> None:
        received = self._received
        if received is not None:
            self.accelerator.set_trigger()
        if not self.accelerator.check_trigger():
            return
        # Not every process need have had the signal: a scheduler may signal one node's launcher only.
        self._stop_signal = next(signum for signum in gather_object([received]) if signum is not None)
        self._received = None
        self.control.should_save = True
        self.control.should_evaluate = False
        self.control.should_training_stop = True

    def _exit_after_signal(self) -> None:
        name = signal.Signals(self._stop_signal).name
        step = self.state.global_step
        checkpoint = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        if self.accelerator.is_main_process:
            logger.warning(
                "%s: stopped after step %d and saved %s; to go on from there, run the same command with "
                "resume_from_checkpoint: true (or --resume_from_checkpoint true)",
                name,
                step,
                checkpoint,
            )
        self.accelerator.wait_for_everyone()  # the launcher stops the other processes as soon as one ends
        raise SystemExit(128 + self._stop_signal)


def with_safe_stops(trainer_class: type) -> type:
    """`trainer_class` (DPOTrainer, KTOTrainer, CPOTrainer..., with atomic checkpoints) with `SafeStops`."""
    return type(f"SafeStop{trainer_class.__name__}", (SafeStops, trainer_class), {})
