"""A test hook that pauses a training run at a chosen moment, so that a test can kill it exactly there.

Python imports `sitecustomize` from its path at startup: the kill tests put this directory on a script's PYTHONPATH,
and nothing else does. `PREFOPT_TEST_PAUSE_AT` chooses the moment:

- `save N`: during the save of checkpoint N, after its weights and optimizer state, with its scheduler state cut
  short halfway, as a kill in the middle of writing leaves a file;
- `step N`: as optimizer step N begins;
- `merge saved`: once a model's weights are saved into the staging directory of a merge (`.<name>.tmp-<pid>`).

The run then creates the file named by `PREFOPT_TEST_PAUSED` and sleeps until it is killed.
"""

import os

if os.environ.get("PREFOPT_TEST_PAUSE_AT"):
    import io
    import time
    from pathlib import Path

    import torch
    import transformers

    moment, step = os.environ["PREFOPT_TEST_PAUSE_AT"].split()

    def pause() -> None:
        Path(os.environ["PREFOPT_TEST_PAUSED"]).touch()
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
    else:
        training_step = transformers.Trainer.training_step

        def pause_at_step(self, *args, **kwargs):
            if self.state.global_step + 1 == int(step):
                pause()
            return training_step(self, *args, **kwargs)

        transformers.Trainer.training_step = pause_at_step
