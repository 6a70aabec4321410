"""The docs match the program: every repository path the pages and the tools' help name exists,
every link between the pages resolves, every example writes only into git-ignored folders, every
flag a documented command passes to a script is in that script's --help, the front page's Python
example runs, and the architecture tree lists the package's files."""
import functools
import glob
import os
import re
import subprocess
import sys

import pytest

from helpers.paths import REPO_ROOT as REPO

# Paths into the repository's own folders (generated ones such as output/ or data/ excluded).
REPO_PATH = re.compile(r"(?<![\w./-])((?:configs|tools|benchmarks|deploy|docs|tests|ernie_vilg2)/[\w./{},-]*[\w}])")
BRACES = re.compile(r"\{([^{}]*)\}")
OUT_FLAG = re.compile(r"--(?:out|save-noise|save-ref-stats|screenshot)[ =]([\w./-]+)")
SAVE_CALL = re.compile(r"\.save(?:_pretrained)?\(\s*[\"']([^\"']+)[\"']")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
INLINE_CODE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SCRIPT = re.compile(r"(?<![\w./-])((?:tools|benchmarks|deploy/python)/\w+\.py)(?![\w.])")
LONG_FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
COMMAND_END = re.compile(r";|&&|\|\||\s\|\s|\s#")


def _read(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def _pages():
    """The Markdown pages: the front page, docs/ and the deployment README."""
    found = glob.glob(os.path.join(REPO, "docs", "*.md")) + glob.glob(os.path.join(REPO, "deploy", "**", "*.md"),
                                                                      recursive=True)
    return ["README.md"] + sorted(os.path.relpath(p, REPO) for p in found)


def _docs():
    """The pages plus the tools' sources (their help names paths too)."""
    tools = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "tools", "*.py")))
    return {doc: _read(doc) for doc in _pages() + tools}


def _expand(path):
    """``a_{en,zh}.tsv`` -> ``a_en.tsv``, ``a_zh.tsv`` (shell brace expansion)."""
    match = BRACES.search(path)
    if not match:
        return [path]
    return [q for alt in match.group(1).split(",") for q in _expand(path[:match.start()] + alt + path[match.end():])]


def _git_ignored(paths, as_folders_too=False):
    """Those of ``paths`` git ignores. A folder that does not exist yet matches a ``folder/``
    pattern only when asked with its slash: ``as_folders_too`` asks each path that way too."""
    if not paths:
        return set()
    asked = [q for p in paths for q in ((p, p.rstrip("/") + "/") if as_folders_too else (p,))]
    reported = set(subprocess.run(["git", "check-ignore", "--no-index", *asked], cwd=REPO, capture_output=True,
                                  text=True).stdout.split())
    return {p for p in paths if p in reported or (as_folders_too and p.rstrip("/") + "/" in reported)}


@pytest.mark.parametrize("doc", sorted(_docs()))
def test_named_repository_paths_exist(doc):
    text = _docs()[doc]
    named = {q for p in REPO_PATH.findall(text) for q in _expand(p)}
    missing = sorted(p for p in named if not os.path.exists(os.path.join(REPO, p)))
    # What a build makes (deploy/cpp/build/..., the ops' _build/) is git-ignored and need not exist yet.
    missing = sorted(set(missing) - _git_ignored(missing, as_folders_too=True))
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def _outputs(text):
    """What the page's examples write: --out-like flags and Python ``.save("...")`` calls."""
    placeholder = re.compile(r"[A-Z_]+(\.\w+)?")  # DIR, FILE.png: the flag's table, not an example
    return sorted({p for p in OUT_FLAG.findall(text) + SAVE_CALL.findall(text) if not placeholder.fullmatch(p)})


@pytest.mark.parametrize("doc", _pages())
def test_examples_write_only_to_ignored_folders(doc):
    outputs = _outputs(_read(doc))
    assert sorted(set(outputs) - _git_ignored(outputs)) == [], f"{doc}: examples write outside git-ignored folders"


def test_the_output_patterns_find_the_examples():
    for doc in ("README.md", "docs/sampling.md", "docs/evaluation.md", "deploy/README.md"):
        assert _outputs(_read(doc)), f"no output paths found in {doc}: the patterns are stale"


def _slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text):
    prose = FENCE.sub("", text)  # a '#' line in a code block is a comment, not a heading
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", prose, re.M):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("doc", _pages())
def test_links_resolve(doc):
    broken = []
    for target in LINK.findall(FENCE.sub("", _read(doc))):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
        if not os.path.exists(os.path.join(REPO, linked)):
            broken.append(f"{target} (no file {linked})")
        elif anchor and anchor not in _anchors(_read(linked)):
            broken.append(f"{target} (no heading #{anchor} in {linked})")
    assert not broken, f"{doc} has broken links: {broken}"


def test_anchor_slugs_follow_github():
    assert _slug("A config for two-object scenes (`configs/tiny_scenes.yaml`)") == \
        "a-config-for-two-object-scenes-configstiny_scenesyaml"
    assert _slug("C++ runner") == "c-runner"
    assert _anchors("## Tests\n```bash\n# not a heading\n```\n## Tests\n") == {"tests", "tests-1"}


def _commands(text):
    """Command lines of the page: fenced shell blocks (continuations joined, comments cut) and
    inline code spans."""
    commands = []
    for lang, body in FENCE.findall(text):
        if lang in ("python", "json", "yaml"):
            continue
        commands += [COMMAND_END.split(line)[0] for line in body.replace("\\\n", " ").splitlines()]
    commands += [COMMAND_END.split(" ".join(span.split()))[0] for span in INLINE_CODE.findall(FENCE.sub("", text))]
    return commands


def _passed_flags(text):
    """(script, flag) for each --flag that a command line passes to a repository script."""
    pairs = set()
    for command in _commands(text):
        scripts = list(SCRIPT.finditer(command))
        for i, match in enumerate(scripts):
            end = scripts[i + 1].start() if i + 1 < len(scripts) else len(command)
            pairs |= {(match.group(1), flag) for flag in LONG_FLAG.findall(command[match.end():end])}
    return pairs


def test_passed_flags_are_found():
    pairs = _passed_flags("```bash\npython -m paddle.distributed.launch --nproc_per_node 1 tools/train.py -c x \\\n"
                          "    --resume   # --not-this\n```\nrun `python benchmarks/ablation.py --out o\n--jobs 2`.")
    assert pairs == {("tools/train.py", "--resume"), ("benchmarks/ablation.py", "--out"),
                     ("benchmarks/ablation.py", "--jobs")}


@functools.lru_cache(maxsize=None)
def _help(script):
    source = _read(script)
    assert "argparse" in source, f"{script} takes no flags (no argparse), but the docs pass it some"
    env = dict(os.environ, GLOG_minloglevel="2", PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, script, "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, f"{script} --help failed: {done.stderr[-500:]}"
    return done.stdout


@pytest.mark.parametrize("doc", _pages())
def test_documented_flags_exist(doc):
    unknown = []
    for script, flag in sorted(_passed_flags(_read(doc))):
        if not os.path.exists(os.path.join(REPO, script)):
            continue  # a missing script is test_named_repository_paths_exist's finding
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", _help(script)):
            unknown.append(f"{script} {flag}")
    assert not unknown, f"{doc} passes flags the scripts do not have: {unknown}"


def test_front_page_python_example_runs(tiny_pipeline_dir, tmp_path):
    example = next(body for lang, body in FENCE.findall(_read("README.md")) if lang == "python")
    assert 'from_pretrained("output/demo/experts")' in example and ".images[0]" in example
    out = tmp_path / "image.png"
    code = example.replace("output/demo/experts", tiny_pipeline_dir)
    code, saves = SAVE_CALL.subn(lambda m: m.group(0).replace(m.group(1), str(out)), code)
    assert saves == 1, "the example should save one image"
    exec(compile(code, "README.md example", "exec"), {})
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (32, 32)


def _tree_files(text):
    """The files the first code block of docs/architecture.md lists under ernie_vilg2/."""
    tree = FENCE.findall(text)[0][1]
    stack, files = [], set()
    for line in tree.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        name = line.split()[0] if line.strip() else ""
        if indent > 12 or indent % 2 or not re.fullmatch(r"[\w.-]+/|[\w-]+\.\w+", name):
            continue  # a description's continuation line
        del stack[indent // 2:]
        stack.append(name)
        if not name.endswith("/") and stack[0] == "ernie_vilg2/":
            files.add("".join(stack))
    return files


def test_architecture_tree_lists_the_package_files():
    tracked = subprocess.run(["git", "ls-files", "ernie_vilg2"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    # A subpackage's __init__.py is its folder's line; the top-level one is listed (it sets things up).
    expected = {p for p in tracked if not (p.endswith("/__init__.py") and p.count("/") > 1)}
    listed = _tree_files(_read("docs/architecture.md"))
    assert sorted(expected - listed) == [], "files missing from the tree"
    assert sorted(listed - expected) == [], "the tree lists files that are not in the repository"
