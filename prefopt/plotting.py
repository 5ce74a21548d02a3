"""Figures: matplotlib on a file-only backend, saved atomically; and the loss plot every run draws at its end."""

from pathlib import Path

from prefopt.atomic import atomic_file
from prefopt.run_logs import loss_curves, read_log_history


def pyplot():
    """matplotlib's pyplot, drawing to files only (training nodes have no display).

    Imported on first use rather than at the top: imported at the start of a run, matplotlib added 28 MiB to the
    peak memory of every training process.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, image_path: str | Path, dpi: int = 120) -> Path:
    """Lay out `figure`, write it to `image_path` (replaced whole or not at all) and close it."""
    figure.tight_layout()
    with atomic_file(image_path) as staging:
        figure.savefig(staging, dpi=dpi)
    pyplot().close(figure)
    return Path(image_path)


def plot_losses(run_dir: str | Path, images_dir: str | Path) -> Path:
    """The run's loss figure, titled and named after `run_dir`: `<images_dir>/<run>_train_loss.png`."""
    run_name = Path(run_dir).name
    return save_figure(loss_figure(run_dir, run_name), Path(images_dir) / f"{run_name}_train_loss.png")


def loss_figure(run_dir: str | Path, title: str):
    """Train loss and, if the run evaluated, eval loss on the same axes, from the run's log history."""
    figure, axes = pyplot().subplots(figsize=(7, 4.5))
    for name, (steps, losses) in loss_curves(read_log_history(run_dir)).items():
        axes.plot(steps, losses, marker="o" if name == "eval" else None, markersize=4, label=f"{name} loss")
    axes.set(title=title, xlabel="step", ylabel="loss")
    axes.grid(alpha=0.3)
    if axes.lines:  # a run shorter than logging_steps logged no loss
        axes.legend()
    return figure
