"""Local data files: which `datasets` builder reads each kind, and what keeps a file from being read, in one line.

A file is JSON Lines, JSON (a list of records), Parquet or CSV, and the text kinds may be compressed with gzip
(`pairs.jsonl.gz`, as Anthropic's HH-RLHF is published). Problems are named with the line or record where they show:
", line 4: not valid JSON (...)", so that the caller can prefix the key and the file.
"""

import contextlib
import gzip
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pandas
import pyarrow
import pyarrow.parquet
from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns

from prefopt.errors import UserError

# File extension -> the `datasets` builder that reads it; text kinds may end in .gz as well.
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
COMPRESSED_SUFFIX = ".gz"
SUPPORTED_FILES = f"{', '.join(DATA_FILE_BUILDERS)}, and .jsonl/.json/.csv compressed as .gz"


def data_file_kind(path: str | Path) -> str | None:
    """The extension that says how `path` is read (.jsonl for pairs.jsonl.gz), or None for a file it cannot read."""
    suffixes = Path(path).suffixes
    if suffixes[-1:] == [COMPRESSED_SUFFIX]:
        suffixes = suffixes[:-1]
        return suffixes[-1] if suffixes[-1:] and suffixes[-1] in (".jsonl", ".json", ".csv") else None
    return suffixes[-1] if suffixes and suffixes[-1] in DATA_FILE_BUILDERS else None


def data_files_in(directory: Path) -> list[Path]:
    """The data files `datasets` reads from `directory`: those its split patterns select (train.jsonl, test.jsonl,
    ...), or every file when none matches; never a metadata.json beside them."""
    try:
        files = DataFilesDict.from_patterns(get_data_patterns(str(directory)), base_path=str(directory))
    except EmptyDatasetError:
        return []
    # datasets resolves the paths; messages name them as the user did, under `directory`
    paths = {directory / os.path.relpath(file, directory.resolve()) for split in files.values() for file in split}
    return sorted(filter(data_file_kind, paths))


def open_text(path: Path) -> IO[str]:
    """`path` as UTF-8 text, decompressed if it ends in .gz."""
    if path.suffix == COMPRESSED_SUFFIX:
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def check_readable(path: Path, key: str) -> None:
    """What `datasets` would read wrongly or fail on with a traceback, refused in one line before it reads `path`."""
    kind = data_file_kind(path)
    if kind is None:
        raise UserError(f"{key}: cannot read '{path}' (supported: {SUPPORTED_FILES})")
    if path.stat().st_size == 0:
        raise UserError(f"{key}: '{path}' is empty")
    if kind == ".parquet":
        return
    problem = utf8_problem(path)
    if problem is None and kind == ".json":
        problem = _one_object_problem_of(path)
    if problem:
        raise UserError(f"{key}: '{path}'{problem}")


def utf8_problem(path: Path) -> str | None:
    """The first line that is not UTF-8: pyarrow's JSON reader takes such bytes, which then fail when a row is read."""
    opener = gzip.open if path.suffix == COMPRESSED_SUFFIX else open
    try:
        with opener(path, "rb") as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as error:
                    return (
                        f", line {number}: not UTF-8 text (byte 0x{line[error.start]:02x} at column "
                        f"{error.start + 1}); "
                        "save the file as UTF-8"
                    )
    except (gzip.BadGzipFile, EOFError) as error:
        return f": not a readable gzip file ({error})"
    return None


def _one_object_problem_of(path: Path) -> str | None:
    """A .json file that is one object, on one line or several: datasets would read it as a single record."""
    with open_text(path) as lines:
        if lines.read(1) != "{":
            return None  # a list of records, or not JSON: datasets reads it or fails
        lines.seek(0)
        first = lines.readline()
        try:
            value = json.loads(first)
        except json.JSONDecodeError:  # an object over several lines, or a broken first record
            value = None
            lines.seek(0)
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(lines.read())
        else:
            if any(line.strip() for line in lines):
                return None  # one object per line: JSON Lines
    return _one_object_problem(value) if isinstance(value, dict) else None


def _one_object_problem(value: dict) -> str:
    return (
        f" holds one JSON object (keys: {', '.join(value)}), not records; write a list of records [{{...}}, {{...}}], "
        "or one record per line in a .jsonl file"
    )


@contextlib.contextmanager
def broken_files_reported(path: Path, key: str) -> Iterator[None]:
    """When `datasets` cannot read local data, name the first broken file and what is wrong with it, in one line.

    Only then are the files read again, with json, pandas and pyarrow; if they all read cleanly, datasets' error stands.
    """
    try:
        yield
    except Exception:
        for file in [path] if path.is_file() else data_files_in(path):
            problem = file_problem(file)
            if problem:
                raise UserError(f"{key}: '{file}'{problem}") from None
        raise


def file_problem(path: Path) -> str | None:
    """What keeps `path`, UTF-8 text or Parquet, from being read, with the line or record where it shows: ", line 4:
    ..." or ": ..."."""
    kind = data_file_kind(path)
    if kind == ".parquet":
        try:
            pyarrow.parquet.read_table(path)
        except pyarrow.ArrowException as error:
            return f": not a readable Parquet file, truncated or corrupt ({_first_sentence(error)})"
        return None
    if kind == ".csv":
        try:
            pandas.read_csv(path)
        except pandas.errors.ParserError as error:
            return f": not a readable CSV file ({' '.join(str(error).split())})"
        return None
    return _json_problem(path)


def _json_problem(path: Path) -> str | None:
    """A .json file: a list of records (or JSON Lines); a .jsonl file: one record per line."""
    with open_text(path) as file:
        text = file.read()
    document = None
    try:
        if data_file_kind(path) == ".json":
            document = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg != "Extra data":  # else one value after another: JSON Lines, read line by line below
            return f", line {error.lineno}: not valid JSON ({error.msg})"
    if isinstance(document, dict):
        return _one_object_problem(document)
    if isinstance(document, list):
        for index, record in enumerate(document):
            if not isinstance(record, dict):
                return f", record {index}: expected an object, got {type(record).__name__}"
        return None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return f", line {number}: not valid JSON ({error.msg}); each line must hold one JSON object"
        if not isinstance(record, dict):
            return f", line {number}: expected one JSON object per line, got {type(record).__name__}"
    return None


def _first_sentence(error: Exception) -> str:
    return " ".join(str(error).split()).split(". ")[0].rstrip(".")


def record_line(path: Path, index: int) -> int:
    """The line of JSON Lines file `path` that holds record `index`: blank lines hold none."""
    with open_text(path) as lines:
        record_lines = (number for number, line in enumerate(lines, start=1) if line.strip())
        return next(itertools.islice(record_lines, index, None))
