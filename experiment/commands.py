"""What the experiment's commands (`python -m experiment.<module>`) share: their parser and their log format."""

import argparse
import logging


def command_parser(module: str, docstring: str, **options) -> argparse.ArgumentParser:
    """A parser for `python -m <module>`, described by the docstring's first paragraph, showing every default."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=docstring.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        **options,
    )


def log_progress() -> None:
    """Progress lines as plain messages on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
