"""What the docs, docstrings and comments name exists: every file or folder of the repo, every
``python -m alexnet_jax.X`` command, every README section; so that a move or a rename that
leaves a text behind fails here."""
import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOTS = ("alexnet_jax", "tests", "experiments", "docs", "scripts", "benchmarks")
PATH = re.compile(rf"(?<![\w/.-])((?:{'|'.join(ROOTS)})/[\w./-]*\w)")
COMMAND = re.compile(r"python3? -m (alexnet_jax(?:\.\w+)*)")
SECTION = re.compile(r'README,? "([^"]+)"')
# Not paths: a key of jax.distributed's store; a placeholder in a command line.
NOT_PATHS = {"alexnet_jax/stop"}


def texts():
    """(file, text) for every text a reader meets: the README, docs/, the code's files."""
    patterns = ["README.md", "Makefile", "requirements.txt", "docs/**/*.md", "scripts/*.sh",
                *(f"{root}/**/*.{ext}" for root in ROOTS for ext in ("py", "cc", "cpp"))]
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(REPO, pattern), recursive=True)):
            if os.path.abspath(path) != os.path.abspath(__file__):
                with open(path) as f:
                    yield os.path.relpath(path, REPO), f.read()


def is_placeholder(path):
    """``experiments/X.py``, ``docs/studies/NAME``: a part in capitals stands for a name."""
    return any(re.fullmatch(r"[A-Z_]+(\.\w+)?", part) for part in path.split("/"))


def test_every_path_named_exists():
    missing = {(name, path) for name, text in texts() for path in PATH.findall(text)
               if path not in NOT_PATHS and not is_placeholder(path)
               and not glob.glob(os.path.join(REPO, path.rstrip(".")) + "*")}
    assert not missing, sorted(missing)


def test_every_command_named_is_a_module():
    def exists(module):
        base = os.path.join(REPO, *module.split("."))
        return os.path.exists(base + ".py") or os.path.exists(os.path.join(base, "__main__.py"))
    missing = {(name, m) for name, text in texts() for m in COMMAND.findall(text)
               if not exists(m)}
    assert not missing, sorted(missing)


def test_every_readme_section_named_exists():
    with open(os.path.join(REPO, "README.md")) as f:
        headings = {line.lstrip("#").strip() for line in f if line.startswith("#")}
    missing = {(name, s) for name, text in texts() for s in SECTION.findall(text)
               if s not in headings}
    assert not missing, sorted(missing)
