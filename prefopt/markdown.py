"""Markdown tables, as the results, the benchmark reports and the model cards write them."""

from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; each cell is written as given (see `table_cell` for free text)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def table_cell(text: str) -> str:
    """`text` inside a table cell: on one line, pipes escaped, unprintable characters shown as such."""
    printable = "".join(char if char.isprintable() or char.isspace() else "\ufffd" for char in text)
    return " ".join(printable.split()).replace("|", "\\|")
