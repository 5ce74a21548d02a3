"""The docs say what the code does: the README stays a front page, every link leads somewhere, every path they name
exists, and every command they show uses flags and configs that the scripts and modules accept."""

import dataclasses
import itertools
import re
import shlex
import subprocess
import sys
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


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def inline_code(text: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.findall(r"`([^`\n]+)`", prose)


def shell_commands(text: str) -> list[list[str]]:
    """The commands of the page's code blocks, continuation lines joined, comments dropped, split into words; a line
    of several commands (`&&`, `;`) gives each."""
    commands = []
    for block in code_blocks(text):
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
