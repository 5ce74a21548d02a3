"""The docs say what the code does: the README stays a front page, every link leads somewhere, every path they name
exists, every command they show uses flags and configs that the scripts and modules accept, the layout tree names every
module, and the error lines of the troubleshooting page are worded as the code and its tests word them."""

import dataclasses
import functools
import io
import itertools
import re
import shlex
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
from trl import DatasetMixtureConfig, DPOConfig, KTOConfig, ModelConfig, ScriptArguments

from prefopt.config import PrefOptParser, RunArguments
from simpo import SimPOConfig
from tests.helpers import REPO, script_env

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmark" / "README.md"]
PAGE_IDS = [str(page.relative_to(REPO)) for page in PAGES]
README_LIMIT = 15 * 1024

# Paths the docs name that the repository holds (outputs such as models/ and outputs/ are made by runs).
TRACKED_ROOTS = ("prefopt/", "experiment/", "benchmark/", "tests/", "training_configs/", "accelerate_configs/",
                 "docs/", "images/", ".ci/")  # fmt: skip
COMMITTED_RESULTS = re.compile(r"^results/(results|simpo_ablation|sweep)\.json$|^results/\*\.json$")
SCRIPT_CONFIGS = {"dpo.py": DPOConfig, "kto.py": KTOConfig, "simpo.py": SimPOConfig}


def code_blocks(text: str, languages: tuple[str, ...] | None = None) -> list[str]:
    """The code blocks of a page, or those whose language is one of `languages` ("" for none named)."""
    blocks = re.findall(r"^```([a-z]*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    return [body for language, body in blocks if languages is None or language in languages]


def inline_code(text: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.findall(r"`([^`\n]+)`", prose)


def shell_commands(text: str) -> list[list[str]]:
    """The commands of the page's shell code blocks (bash, sh or unnamed), continuation lines joined, comments dropped,
    split into words; a line of several commands (`&&`, `;`) gives each."""
    commands = []
    for block in code_blocks(text, languages=("bash", "sh", "")):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # not shell: JSON, YAML or a log line
                continue
            for is_separator, group in itertools.groupby(words, lambda word: word in ("&&", ";", "do", "done")):
                if not is_separator:
                    commands.append(list(group))
    return commands


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {github_anchor(heading) for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def test_the_readme_is_a_front_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= README_LIMIT
    first_screen = readme[: readme.index("## Contents")]
    for what in ("bash run_script.bash", "--dataset_name", "models/", ".venv/bin/python -m pytest"):
        assert what in first_screen, what
    for page in PAGES[1:]:
        assert f"]({page.relative_to(REPO)})" in readme, f"the README links to every page: {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_relative_link_leads_somewhere(page):
    for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if "://" in link:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{link}: no such file"
        if anchor:
            assert anchor in anchors(path), f"{link}: no such heading"


def named_paths(text: str) -> set[str]:
    words = inline_code(text) + [word for command in shell_commands(text) for word in command]
    return {word.rstrip(".,;:") for word in words if word.startswith(TRACKED_ROOTS) or COMMITTED_RESULTS.match(word)}


def expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    return [
        expanded
        for option in match.group(1).split(",")
        for expanded in expand_braces(pattern[: match.start()] + option + pattern[match.end() :])
    ]


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_path_the_docs_name_exists(page):
    for path in sorted(named_paths(page.read_text())):
        for pattern in expand_braces(re.sub(r"<[^>]+>|\$\w+", "*", path)):  # <run>, $algorithm: any
            assert any(REPO.glob(pattern.rstrip("/"))), f"{page.name} names {path}, which does not exist"


def script_keys(config_class: type) -> set[str]:
    parser = PrefOptParser((ScriptArguments, config_class, ModelConfig, RunArguments))
    return {"--config", *(option for action in parser._actions for option in action.option_strings)}


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_script_command_uses_keys_the_script_takes(page):
    for command in shell_commands(page.read_text()):
        script = next((word for word in command if word in SCRIPT_CONFIGS), None)
        if script is None:
            continue
        keys = script_keys(SCRIPT_CONFIGS[script])
        arguments = command[command.index(script) + 1 :]
        for flag in (word for word in arguments if word.startswith("--")):
            assert flag.split("=")[0] in keys, f"{page.name}: {script} has no key {flag}: {' '.join(command)}"
        if "--config" in arguments:
            assert (REPO / arguments[arguments.index("--config") + 1]).is_file(), " ".join(command)


def module_commands() -> dict[str, set[str]]:
    """Each `python -m` module the docs run, with the flags they give it."""
    flags: dict[str, set[str]] = {}
    for page in PAGES:
        for command in shell_commands(page.read_text()):
            for index in (index for index, word in enumerate(command[:-1]) if word == "-m"):
                module = command[index + 1]
                if module != "pytest" and "<" not in module:  # experiment.<module> stands for several
                    flags.setdefault(module, set()).update(w.split("=")[0] for w in command if w.startswith("--"))
    return flags


@pytest.mark.parametrize("module, flags", sorted(module_commands().items()))
def test_every_module_command_exists_and_takes_the_flags_shown(module, flags):
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, env=script_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    unknown = [flag for flag in flags if not re.search(rf"{re.escape(flag)}\b", result.stdout)]
    assert not unknown, f"python -m {module} does not take {unknown}"


@pytest.mark.parametrize("command", ["setup.bash", "run_script.bash"])
def test_the_shell_scripts_explain_themselves(command):
    result = subprocess.run(["bash", command, "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("Usage:"), result.stderr


@pytest.mark.parametrize("page", ["README.md", "docs/configuration.md"])
def test_the_keys_table_lists_every_key_of_this_repository_with_its_default(page):
    text = (REPO / page).read_text()
    table = text[text.index("| key | default | what it does |") :].split("\n\n")[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", table, re.MULTILINE)
    trl_keys = {field.name for field in dataclasses.fields(DatasetMixtureConfig)}  # TRL's own, documented by TRL
    fields = [field for field in dataclasses.fields(RunArguments) if field.name not in trl_keys]
    assert [key for key, _ in rows] == [field.name for field in fields]
    for (key, default), field in zip(rows, fields):
        if isinstance(field.default, bool):
            assert default.strip() == f"`{str(field.default).lower()}`", key


def layout_tree() -> list[str]:
    """The paths that the layout tree of docs/development.md names: a name indented under a folder lies in it."""
    text = (REPO / "docs" / "development.md").read_text()
    tree = code_blocks(text[text.index("## Layout") :])[0]
    paths, folder = [], ""
    for line in tree.splitlines():
        names = re.split(r"\s{2,}", line.strip())[0].split(", ")
        indented = line.startswith(" ")
        paths += [folder + name if indented else name for name in names]
        if not indented and names[-1].endswith("/"):
            folder = names[-1]
    return paths


def test_the_layout_tree_names_every_module_and_only_files_that_exist():
    named = layout_tree()
    assert [path for path in named if not (REPO / path).exists()] == []
    modules = [
        str(path.relative_to(REPO))
        for folder in ("prefopt", "experiment", "benchmark")
        for path in sorted((REPO / folder).glob("*.py"))
        if path.name != "__init__.py"
    ]
    assert [module for module in modules if module not in named] == []


# The error lines quoted in docs/troubleshooting.md against the string literals of the code and the tests. A literal's
# fields ({...} of an f-string or a format string) stand for other text: a value, a word or two, or text that is itself
# worded at the start of a literal (a message made of parts). Values that differ between an example and a test (quoted
# names, numbers, paths and file names) are compared as one VALUE. Most of a line must be the literals' own words.
FIELD, VALUE = "\x00", "\x01"
SHORT_FIELD = 12  # characters, in at most two words, that a field may stand for without being worded elsewhere
SHARED = 8  # characters a line must share with a literal to be compared with it
WORDED_SHARE = 0.6  # of a line's characters, matched by the literals' words


def string_literals(path: Path) -> list[str]:
    """The string literals of a Python file as written, adjacent ones joined as Python joins them."""
    literals, parts = [], []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.STRING:
            body = re.match(r"^[a-zA-Z]*('''|\"\"\"|'|\")(.*)\1$", token.string, re.DOTALL).group(2)
            parts.append(body.replace("\\'", "'").replace('\\"', '"'))
        elif token.type not in (tokenize.NL, tokenize.COMMENT) and parts:
            literals.append("".join(parts))
            parts = []
    return literals


QUOTED = r"(?<!\w)'[^'\n]*'(?!\w)"
PATH = r"[^\s'(),;:\[\]]*(?:/|\.(?:jsonl|json|yaml|csv|parquet|txt|gz|jinja)\b)[^\s'(),;:\[\]]*"
NUMBER = r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?!\w)"


def skeleton(text: str) -> str:
    """`text` with its quoted names, paths, file names and numbers each as one VALUE."""
    for pattern in (QUOTED, PATH, NUMBER):
        text = re.sub(pattern, VALUE, text)
    return text


def with_fields_marked(literal: str) -> str:
    """`literal` with each {...} field (nested braces included) as one FIELD; {{ and }} are braces."""
    literal = literal.replace("{{", "(").replace("}}", ")")
    marked, depth = [], 0
    for char in literal:
        if char == "{":
            marked += [FIELD] if depth == 0 else []
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        elif depth == 0:
            marked.append(char)
    return "".join(marked)


@functools.cache
def worded_literals() -> tuple[list[tuple[str, ...]], dict[str, set[int]]]:
    """Every literal of the scripts, `prefopt` and the tests as its texts between fields, and an index of them by each
    SHARED characters they hold."""
    files = [*REPO.glob("*.py"), *REPO.glob("prefopt/*.py"), *REPO.glob("tests/**/*.py")]
    literals = [skeleton(with_fields_marked(text)) for path in files for text in string_literals(path)]
    index: dict[str, set[int]] = {}
    for number, literal in enumerate(literals):
        for start in range(len(literal) - SHARED + 1):
            index.setdefault(literal[start : start + SHARED], set()).add(number)
    return [tuple(literal.split(FIELD)) for literal in literals], index


def worded_length(line: str, segments: tuple[str, ...], nested: bool) -> int:
    """How many characters of `line` the literal whose texts between fields are `segments` words, at best, when the
    line reads as it (up to any point of it); -1 when it does not."""

    def field(text: str) -> int:  # how much of the text a field stands for is worded; -1: too much of it is not
        if not nested and is_worded(text, nested=True):
            return len(text)
        return 0 if len(text.strip(" ;,:()")) <= SHORT_FIELD and text.strip().count(" ") <= 1 else -1

    @functools.cache
    def worded(index: int, position: int) -> int:  # segments[index] starts at line[position]
        segment, rest = segments[index], line[position:]
        if not rest.startswith(segment):
            return len(rest) if segment.startswith(rest) else -1
        end = position + len(segment)
        if end == len(line):
            return len(segment)
        if index + 1 == len(segments):
            return -1
        following = segments[index + 1]
        ends = [at for at in range(end, len(line)) if following.startswith(line[at:]) or line.startswith(following, at)]
        options = [field(line[end:])]  # the line ends in the field
        for at in ends:
            in_field, after = field(line[end:at]), worded(index + 1, at)
            options.append(in_field + after if min(in_field, after) >= 0 else -1)
        return len(segment) + max(options) if max(options) >= 0 else -1

    return worded(0, 0)


def word_starts(segments: tuple[str, ...]) -> list[tuple[int, int]]:
    """(segment, offset) of each word in a literal's texts between fields."""
    return [
        (number, offset)
        for number, segment in enumerate(segments)
        for offset in range(len(segment) + 1)
        if offset == 0 or segment[offset - 1] == " "
    ]


@functools.cache
def is_worded(line: str, nested: bool = False) -> bool:
    """Whether the code or the tests word `line` (its values aside): from a word of one of their literals on, or, for
    the text a field stands for, from the start of one."""
    literals, index = worded_literals()
    candidates = set().union(*(index.get(line[at : at + SHARED], set()) for at in range(len(line) - SHARED + 1)))
    for segments in (literals[number] for number in sorted(candidates)):
        for number, offset in [(0, 0)] if nested else word_starts(segments):
            start = segments[number][offset:]
            if not (line.startswith(start) or start.startswith(line)):
                continue
            if worded_length(line, (start, *segments[number + 1 :]), nested) >= WORDED_SHARE * len(line):
                return True
    return False


def troubleshooting_error_lines() -> list[str]:
    """The lines quoted in the table of one-line errors, each up to its `...` (and the punctuation before it)."""
    text = (REPO / "docs" / "troubleshooting.md").read_text()
    table = text[text.index("| what is wrong |") :].split("\n\n")[0]
    quotes = [quote for row in table.splitlines()[2:] for quote in re.findall(r"`([^`]+)`", row.split(" | ", 1)[1])]
    return [up_to_the_ellipsis(quote) for quote in quotes if len(quote.split()) >= 4]


def up_to_the_ellipsis(quote: str) -> str:
    """`quote` up to its first `...`, without the punctuation and the opening quote mark that lead to it."""
    if "..." not in quote:
        return quote
    cut = quote.split("...")[0].rstrip(" ;,([{")
    if cut.endswith("'") and cut[-2:-1] in (" ", "(", "["):
        cut = cut[:-1].rstrip(" ;,([{")
    return cut


@pytest.mark.parametrize("line", troubleshooting_error_lines())
def test_every_error_line_of_the_troubleshooting_table_is_worded_as_the_code_words_it(line):
    assert is_worded(skeleton(line).strip()), f"no literal of the code or the tests reads: {line}"
