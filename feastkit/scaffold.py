"""`feastkit init DIR`: a new team's own project, wired to this feastkit checkout.

The project gets a Feast repo (`feature_repo/`), the kit's DAGs, a Makefile (`demo`, `test`, `serve`,
`lint`, `airflow`, `clean`), `scripts/demo.sh`, its own tests, a README and a .gitignore.

Where things come from:
- The project skeleton (Makefile, demo script, tests, README) and the `--minimal` feature repo are
  templates shipped as package data (`feastkit/templates/`).
- The `fraud-churn` example's feature repo, the DAGs and `scripts/airflow.sh` are read from the
  feastkit checkout at init time, so there is no second hand-maintained copy of them. The checkout
  is the one the package is installed from (`pip install -e`: `feastkit/..`), or `--kit-source`.
  Without a checkout init refuses, for every example: the generated Makefile installs feastkit
  editable from that checkout anyway, so a project needs one.

Only definitions are copied: `feature_repo/*.py`, `feature_store.yaml`, `.feastignore` and
`profiles/*.yaml` - never `data/`, whose registry records the kit's own online store path. The
Feast `project:` in every yaml is renamed after the new project, so projects sharing a SQL
registry (the postgres-registry profile) do not overwrite each other.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import feastkit
from feastkit.errors import FeastkitError

TEMPLATES = Path(__file__).resolve().parent / "templates"
MINIMAL = "minimal"
EXAMPLES: dict[str, str] = {
    "fraud-churn": "the kit's own fraud and churn feature repo, copied from its checkout",
    MINIMAL: "one entity, one transactions source, one windowed view, one fraud feature service",
}
DEFAULT_EXAMPLE = "fraud-churn"
# template files stored under other names: dotfiles without their dot (package-data globs skip
# them), tool configs with .template (so ruff and pytest in the kit do not take them for their own)
RENAMES = {"gitignore": ".gitignore", "feastignore": ".feastignore", "ruff.toml.template": "ruff.toml",
           "pytest.ini.template": "pytest.ini"}
SKIPPED = {"__pycache__", ".ruff_cache", ".pytest_cache"}
TEXT_SUFFIXES = {"", ".md", ".py", ".sh", ".toml", ".ini", ".yaml", ".yml", ".template"}
# the checkout's files init reads: the example repo, the DAGs, the Airflow launcher
KIT_FILES = ("pyproject.toml", "feature_repo/feature_store.yaml", "dags", "scripts/airflow.sh")
# `feastkit generate`'s default --users and --days (the kit's demo size, the fraud-churn demo's):
# the CLI's options read them here, so the core never imports the CLI (the layer contract in
# pyproject.toml)
DEMO_SIZE = (2000, 120)
MINIMAL_DEMO_SIZE = (1500, 90)  # the minimal demo's


@dataclass
class Scaffold:
    """What `init` wrote: the project directory, the example, the kit checkout, the files."""

    target: Path
    example: str
    kit: Path
    files: list[Path] = field(default_factory=list)

    def summary(self) -> list[str]:
        tops = sorted({f.relative_to(self.target).parts[0] for f in self.files})
        return [f"created {self.target} ({self.example}: {EXAMPLES[self.example]})",
                f"  {', '.join(tops)}",
                f"  feastkit source: {self.kit}",
                "next:",
                f"  cd {self.target}",
                "  make demo    # data -> feast apply -> features -> train -> materialize -> serve -> predict",
                "  make test    # this project's tests"]


def kit_checkout(explicit: Path | None = None) -> Path:
    """The feastkit checkout to read the example, the DAGs and the install path from."""
    candidate = (explicit or Path(feastkit.__file__).resolve().parent.parent).expanduser().resolve()
    missing = [name for name in KIT_FILES if not (candidate / name).exists()]
    if missing:
        where = "--kit-source" if explicit else "the installed feastkit package's parent"
        raise FeastkitError(
            f"no feastkit checkout at {candidate} ({where} lacks {', '.join(missing)}); `feastkit init` "
            "copies the kit's feature repo and DAGs from a checkout and installs the project from it",
            "install feastkit editable from a checkout (pip install -e /path/to/feastkit), or pass "
            "--kit-source /path/to/feastkit")
    return candidate


def feast_project_name(directory: Path) -> str:
    """A Feast project name from the directory name: letters, digits and underscores."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", directory.name).strip("_").lower() or "project"
    return f"p_{name}" if name[0].isdigit() else name


def _check_target(target: Path, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise FeastkitError(f"{target} exists and is not a directory", "choose a new directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise FeastkitError(f"{target} is not empty",
                            "choose a new or empty directory, or pass --force to write the project into it")


class _Writer:
    def __init__(self, target: Path, values: dict[str, str]) -> None:
        self.target = target
        self.values = values
        self.files: list[Path] = []

    def write(self, relative: str, data: bytes, executable: bool = False, render: bool = True) -> None:
        """Write a file; templates (render) get their @@PLACEHOLDERS@@ filled, kit files are copied as is."""
        path = self.target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if render and path.suffix in TEXT_SUFFIXES:
            text = data.decode()
            for key, value in self.values.items():
                text = text.replace(f"@@{key}@@", value)
            left = sorted(set(re.findall(r"@@[A-Z_]+@@", text)))
            if left:
                raise RuntimeError(f"template {relative} has unknown placeholder(s) {left}")
            data = text.encode()
        path.write_bytes(data)
        if executable:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.files.append(path)

    def copy_tree(self, source: Path, prefix: str) -> None:
        """Every template file under source (dotfile names restored), into prefix/."""
        for item in sorted(source.rglob("*")):
            relative = item.relative_to(source)
            if not item.is_file() or SKIPPED & set(relative.parts) or item.suffix == ".pyc":
                continue
            name = RENAMES.get(relative.name, relative.name)
            self.write(str(Path(prefix) / relative.parent / name), item.read_bytes(),
                       executable=item.suffix == ".sh")


def _rename_project(text: str, project: str) -> str:
    return re.sub(r"(?m)^project:.*$", f"project: {project}", text)


def _kit_repo_files(kit: Path) -> list[tuple[str, Path]]:
    """(relative path, file) of the kit's feature repo definitions: never data/ or registry files."""
    repo = kit / "feature_repo"
    chosen = [*sorted(repo.glob("*.py")), repo / "feature_store.yaml", *sorted((repo / "profiles").glob("*.yaml"))]
    if (repo / ".feastignore").is_file():
        chosen.append(repo / ".feastignore")
    return [(str(p.relative_to(repo)), p) for p in chosen if p.is_file()]


def init_project(target: Path, example: str = DEFAULT_EXAMPLE, force: bool = False,
                 kit_source: Path | None = None) -> Scaffold:
    """Scaffold a project in target (refusing a non-empty directory unless force)."""
    if example not in EXAMPLES:
        raise FeastkitError(f"unknown example '{example}'",
                            f"choose one of {', '.join(sorted(EXAMPLES))} (or --minimal)")
    target = target.expanduser().resolve()
    _check_target(target, force)
    kit = kit_checkout(kit_source)
    project = feast_project_name(target)
    users, days = MINIMAL_DEMO_SIZE if example == MINIMAL else DEMO_SIZE
    writer = _Writer(target, {
        "PROJECT": target.name,
        "FEAST_PROJECT": project,
        "FEASTKIT_SOURCE": str(kit),
        "FEAST_VERSION": metadata.version("feast"),
        "EXAMPLE_TEXT": f"example `{example}`: {EXAMPLES[example]}",
        "DEMO_USERS": str(users),
        "DEMO_DAYS": str(days),
    })
    target.mkdir(parents=True, exist_ok=True)

    if example == MINIMAL:
        writer.copy_tree(TEMPLATES / "minimal" / "feature_repo", "feature_repo")
    else:
        for relative, path in _kit_repo_files(kit):
            data = path.read_bytes()
            if path.suffix == ".yaml":
                data = _rename_project(data.decode(), project).encode()
            writer.write(f"feature_repo/{relative}", data, render=False)
    for dag in sorted((kit / "dags").glob("*.py")):
        writer.write(f"dags/{dag.name}", dag.read_bytes(), render=False)
    writer.write("scripts/airflow.sh", (kit / "scripts" / "airflow.sh").read_bytes(), executable=True,
                 render=False)
    writer.copy_tree(TEMPLATES / "project", ".")
    return Scaffold(target, example, kit, writer.files)
