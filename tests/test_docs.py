"""The docs match the program: every repository path the READMEs and the tools' help name
exists, and every output path of a README example is git-ignored."""
import glob
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Paths into the repository's own folders (generated ones such as output/ or data/ excluded).
REPO_PATH = re.compile(r"(?<![\w./-])((?:configs|tools|benchmarks|deploy|docs|tests|ernie_vilg2)/[\w./{},-]*[\w}])")
BRACES = re.compile(r"\{([^{}]*)\}")
OUT_FLAG = re.compile(r"--(?:out|save-noise)[ =]([\w./-]+)")


def _expand(path):
    """``a_{en,zh}.tsv`` -> ``a_en.tsv``, ``a_zh.tsv`` (shell brace expansion)."""
    match = BRACES.search(path)
    if not match:
        return [path]
    return [q for alt in match.group(1).split(",") for q in _expand(path[:match.start()] + alt + path[match.end():])]


def _docs():
    docs = {"README.md": open(os.path.join(REPO, "README.md"), encoding="utf-8").read()}
    for path in sorted(glob.glob(os.path.join(REPO, "tools", "*.py")) + glob.glob(os.path.join(REPO, "deploy", "**", "*.md"), recursive=True)):
        docs[os.path.relpath(path, REPO)] = open(path, encoding="utf-8").read()
    return docs


@pytest.mark.parametrize("doc", sorted(_docs()))
def test_named_repository_paths_exist(doc):
    text = _docs()[doc]
    named = {q for p in REPO_PATH.findall(text) for q in _expand(p)}
    missing = sorted(p for p in named if not os.path.exists(os.path.join(REPO, p)))
    assert not missing, f"{doc} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", ["README.md", "deploy/README.md"])
def test_readme_examples_write_only_to_ignored_folders(doc):
    text = open(os.path.join(REPO, doc), encoding="utf-8").read()
    placeholder = re.compile(r"[A-Z_]+(\.\w+)?")  # DIR, FILE.png: the flag's table, not an example
    outputs = sorted({p for p in OUT_FLAG.findall(text) if not placeholder.fullmatch(p)})
    assert outputs, "no --out examples found: the pattern is stale"
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *outputs], cwd=REPO, capture_output=True,
                             text=True).stdout.split()
    assert sorted(set(outputs) - set(ignored)) == []
