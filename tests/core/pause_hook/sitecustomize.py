"""A test hook that pauses a training run at a chosen moment, so that a test can kill it exactly there.

Python imports `sitecustomize` from its path at startup: the kill tests put this directory on a script's PYTHONPATH,
and nothing else does. `PREFOPT_TEST_PAUSE_AT` chooses the moment:

- `save N`: during the save of checkpoint N, after its weights and optimizer state, with its scheduler state cut
  short halfway, as a kill in the middle of writing leaves a file;
- `step N`: as optimizer step N begins;
- `signal N`: as optimizer step N begins, until the process receives a signal (which its own handler then takes), and
  then goes on;
- `merge saved`: once a model's weights are saved into the staging directory of a merge (`.<name>.tmp-<pid>`);
- `full N`: as the save of checkpoint N begins (`full model`: of the trained model, after training), a file fills
  the file system of output_dir's parent, and the run goes on to meet a full disk.

At the first four, the run creates the file named by `PREFOPT_TEST_PAUSED`, holding its process id, and sleeps until
it is killed (or, for `signal`, signalled). Only the main process pauses (RANK 0, or no RANK); the others go on to
wait for it.
"""

import os

if os.environ.get("PREFOPT_TEST_PAUSE_AT") and os.environ.get("RANK", "0") == "0":
    import io
    import signal
    import time
    from pathlib import Path

    import torch
    import transformers

    moment, step = os.environ["PREFOPT_TEST_PAUSE_AT"].split()

    def pause() -> None:
        Path(os.environ["PREFOPT_TEST_PAUSED"]).write_text(str(os.getpid()))
        if moment == "signal":
            signal.pause()
        else:
            time.sleep(600)

    if moment == "merge":
        save_pretrained = transformers.PreTrainedModel.save_pretrained

        def save_then_pause(self, directory, *args, **kwargs):
            save_pretrained(self, directory, *args, **kwargs)
            if ".tmp-" in Path(directory).name:
                pause()

        transformers.PreTrainedModel.save_pretrained = save_then_pause
    elif moment == "save":
        save = torch.save

        def save_cut_short(obj, f, *args, **kwargs):
            path = Path(f) if isinstance(f, (str, os.PathLike)) else None
            if path and path.name == "scheduler.pt" and path.parent.name == f"checkpoint-{step}":
                buffer = io.BytesIO()
                save(obj, buffer, *args, **kwargs)
                path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                pause()
            return save(obj, f, *args, **kwargs)

        torch.save = save_cut_short
    elif moment == "full":

        def fill_the_disk(args) -> None:
            filler = os.open(Path(args.output_dir).parent / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(filler, bytes(1 << 16)):
                    pass
            except OSError:  # no space left
                os.close(filler)

        if step == "model":
            save_model = transformers.Trainer.save_model

            def save_model_on_a_full_disk(self, output_dir=None, _internal_call=False):
                if not _internal_call:
                    fill_the_disk(self.args)
                return save_model(self, output_dir, _internal_call)

            transformers.Trainer.save_model = save_model_on_a_full_disk
        else:
            save_checkpoint = transformers.Trainer._save_checkpoint

            def save_checkpoint_on_a_full_disk(self, model, trial):
                if self.state.global_step == int(step):
                    fill_the_disk(self.args)
                return save_checkpoint(self, model, trial)

            transformers.Trainer._save_checkpoint = save_checkpoint_on_a_full_disk
    else:
        training_step = transformers.Trainer.training_step

        def pause_at_step(self, *args, **kwargs):
            if self.state.global_step + 1 == int(step):
                pause()
            return training_step(self, *args, **kwargs)

        transformers.Trainer.training_step = pause_at_step
