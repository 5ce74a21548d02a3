"""The paths a run reads and writes, checked before anything loads, so that no setting can destroy an input or an
output.

Inputs are the base model and the data (when local), the chat template and a named checkpoint; outputs are
`output_dir` (files are added to it), `merged_model_dir` (the merge replaces it whole; every run locks it) and
`images_dir` (a plot is added). They are compared resolved, symlinks followed, so that two spellings of one directory
are one directory:

- no output is an input or lies inside one: the run's files would land in the base model or the data;
- `merged_model_dir` neither is nor contains an input or another output;
- each output is a directory or does not exist yet, and the directories it is written through can be written;
- the file system of `merged_model_dir` has room for the merged model: the local base's files, its weights at
  `merged_dtype`'s width (a hub model's size is known only once downloaded, and is not checked).
"""

import json
import os
import re
import shutil
from pathlib import Path

import torch

from prefopt.errors import UserError

# A hub id is `name` or `org/name`; anything else (./x, /abs/path, a/b/c) is meant as a local path.
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def is_local(path: str) -> bool:
    """A path is local if it exists, is not hub-id shaped, or starts in a local directory (models/x, data/x)."""
    return Path(path).exists() or not _HUB_ID.match(path) or Path(path.split("/")[0]).is_dir()


def check_run_paths(data: list[tuple[str, str]], training_args, model_args, run_args) -> None:
    """Refuse, in one line, any output that would overwrite an input or another output, is not a directory, cannot
    be written, or (for the merged model) has no room on its file system. `data` holds (key, path or hub id) of each
    data source the run reads."""
    outputs = {
        "output_dir": training_args.output_dir,
        "images_dir": run_args.images_dir,
        "merged_model_dir": run_args.merged_model_dir,  # locked by every run, merging or not
    }
    resume = training_args.resume_from_checkpoint
    inputs = {
        key: path
        for key, path in (
            ("model_name_or_path", model_args.model_name_or_path),
            *data,
            ("chat_template_path", run_args.chat_template_path),
            ("resume_from_checkpoint", resume if isinstance(resume, str) else None),
        )
        if path and is_local(path)
    }
    _check_replaced_whole("merged_model_dir", run_args.merged_model_dir, inputs, outputs)
    for output_key, output in outputs.items():
        for input_key, input_path in inputs.items():
            relation = _relation(output, input_path)
            if relation in ("is", "is inside"):
                raise UserError(
                    f"{output_key} {_shown(output)} {relation} {input_key} {_shown(input_path)}, and the run would "
                    f"write into it; choose an {output_key} outside the run's inputs"
                )
    for key, path in outputs.items():
        _check_writable_directory(key, path)
    if not model_args.use_peft and (Path(training_args.output_dir) / "adapter_config.json").is_file():
        # transformers loads an adapter it finds beside a model's weights: the full fine-tune would be published
        # with an earlier run's adapter applied on top.
        raise UserError(
            f"output_dir '{training_args.output_dir}' holds a LoRA adapter (adapter_config.json) of an earlier run, "
            "which loading the full fine-tune saved there would apply to it; choose another output_dir for a full "
            "fine-tune (use_peft: false)"
        )
    if run_args.merge and model_args.use_peft and is_local(model_args.model_name_or_path):
        _check_room_for_merge(model_args.model_name_or_path, run_args.merged_model_dir, run_args.merged_dtype)


def nearest_existing(path: str | Path) -> Path:
    """`path` resolved, or its nearest ancestor that exists: where writing it begins."""
    path = Path(path).resolve()
    return next(candidate for candidate in (path, *path.parents) if candidate.exists())


def free_bytes(path: str | Path) -> int:
    """Free space on the file system that `path` is (or would be) written to."""
    return shutil.disk_usage(nearest_existing(path)).free


def size_text(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def merged_model_bytes(model_dir: str | Path, merged_dtype: str | None) -> int:
    """About what a merge of the base in `model_dir` writes: its files, the weights scaled from the dtype its
    config.json names to `merged_dtype` (the merged model has the base's tensors, plus nothing of the adapter's)."""
    files = [path for path in Path(model_dir).iterdir() if path.is_file()]
    config = json.loads((Path(model_dir) / "config.json").read_text())
    saved_dtype = config.get("dtype") or config.get("torch_dtype")
    scale = 1.0
    if merged_dtype and isinstance(saved_dtype, str) and hasattr(torch, saved_dtype):
        scale = getattr(torch, merged_dtype).itemsize / getattr(torch, saved_dtype).itemsize
    return int(sum(path.stat().st_size * (scale if path.suffix == ".safetensors" else 1) for path in files))


def _relation(a: str | Path, b: str | Path) -> str | None:
    """How path `a` lies to path `b`, both resolved: "is", "is inside", "contains" or None."""
    a, b = Path(a).resolve(), Path(b).resolve()
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return None


def _shown(path: str | Path) -> str:
    """`'path'`, with where it leads when a symlink makes it another path."""
    resolved = Path(path).resolve()
    return f"'{path}'" if resolved == Path(os.path.abspath(path)) else f"'{path}' (-> '{resolved}')"


def _check_replaced_whole(key: str, directory: str, inputs: dict[str, str], outputs: dict[str, str]) -> None:
    for other_key, other in {**inputs, **outputs}.items():
        if other_key != key and _relation(directory, other) in ("is", "contains"):
            raise UserError(
                f"{key} {_shown(directory)} {_relation(directory, other)} {other_key} {_shown(other)}, and the merge "
                f"replaces {key} whole; choose a {key} that holds none of the run's other paths"
            )


def _check_writable_directory(key: str, path: str) -> None:
    """`path` is a directory or does not exist yet, and it and its parent (where locks and the merge's staging
    directory go) can be written where they begin."""
    existing = nearest_existing(path)
    if not existing.is_dir():
        where = "" if existing == Path(path).resolve() else f": '{existing}' is a file"
        raise UserError(f"{key} '{path}' is not a directory{where}; choose a directory for {key}")
    for directory in dict.fromkeys([existing, nearest_existing(Path(path).resolve().parent)]):
        if not os.access(directory, os.W_OK | os.X_OK):
            read_only = os.statvfs(directory).f_flag & os.ST_RDONLY
            why = "is on a read-only file system" if read_only else "is not writable by this user"
            raise UserError(f"{key} '{path}' cannot be written: '{directory}' {why}; choose another {key}")


def _check_room_for_merge(model_dir: str, merged_dir: str, merged_dtype: str | None) -> None:
    # The merge stages the new model beside merged_model_dir and keeps an old one until the rename.
    need, free = merged_model_bytes(model_dir, merged_dtype), free_bytes(Path(merged_dir).resolve().parent)
    if free < need:
        raise UserError(
            f"merged_model_dir '{merged_dir}': {size_text(free)} free on its file system, and the merged model needs "
            f"about {size_text(need)} (the base model's files at merged_dtype); free space or choose another "
            "merged_model_dir"
        )
