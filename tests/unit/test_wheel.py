"""A wheel built from the repository carries the migrations and the local instance config, and a wheel installed into
a fresh virtualenv finds them with ``importlib.resources``.

``sql/`` and ``dagster.yaml`` are sources at the top of the repository that only the build puts into the package
(pyproject.toml's ``package-dir``, setup.py's ``build_py``). Every other test runs against the editable install,
which reads both from the checkout and would not notice a wheel without them. No network: the build uses this
venv's setuptools (``--no-build-isolation``), the install no index (``--no-deps --no-index``), and the fresh
virtualenv borrows this interpreter's dependencies through a ``.pth`` file (its own site-packages, holding the
wheel, comes first).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: What a build must not see: state of this checkout (venvs, stacks, caches, earlier builds, npm's packages).
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".cqox", "node_modules", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
    ".hypothesis", ".tmp_dagster_home_*",
)  # fmt: skip

#: Run by the fresh virtualenv's interpreter: what the installed package finds, through importlib.resources.
_LIST_DATA = """
import json
from importlib.resources import files

from cqox_platform.schema.migrations import SQL_DIR
from cqox_platform.stack.dagster_services import INSTANCE_CONFIG

sql = files("cqox_platform.schema.sql")
print(json.dumps({
    "package": str(files("cqox_platform")),
    "migrations": sorted(p.name for p in sql.iterdir() if p.name.endswith(".sql")),
    "sql_readme": sql.joinpath("README.md").is_file(),
    "SQL_DIR": str(SQL_DIR),
    "instance_config": files("cqox_platform.stack").joinpath("dagster.yaml").read_text(),
    "INSTANCE_CONFIG": str(INSTANCE_CONFIG),
}))
"""


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(argv)} failed in {cwd}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel --no-deps`` builds from a copy of the repository's sources."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES, symlinks=True)
    out = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."], source)
    (built,) = out.glob("cqox_platform-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A fresh virtualenv with the wheel installed, and what its package finds."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], venv.parent)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], venv.parent)  # fmt: skip
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        venv.parent).stdout.strip())  # fmt: skip
    # This interpreter's import path minus any directory holding the code under test (the checkout's root): the
    # dependencies, wherever they are installed (the venv may live inside the checkout).
    ours = ("cqox_platform", "assets", "sensors")
    borrowed = [p for p in sys.path if p and Path(p).is_dir() and not any((Path(p) / n).is_dir() for n in ours)]
    (purelib / "zz_dependencies.pth").write_text("".join(f"{p}\n" for p in borrowed))
    # -I: no PYTHONPATH, no user site, and not the working directory on sys.path, so nothing but the wheel can
    # supply cqox_platform.
    found = json.loads(_run([str(python), "-I", "-c", _LIST_DATA], venv.parent).stdout)
    return purelib, found


def test_the_wheel_holds_the_migrations_and_the_instance_config_inside_the_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = sorted(p.name for p in (REPO / "sql").glob("*.sql"))
    expected = {f"cqox_platform/schema/sql/{name}" for name in [*migrations, "README.md"]}
    expected.add("cqox_platform/stack/dagster.yaml")
    assert expected - names == set()
    assert [n for n in names if n.split("/")[0] in {"sql", "dagster.yaml", "setup.py"}] == []


def test_an_installed_wheel_finds_the_migrations_with_importlib_resources(installed: tuple[Path, dict]) -> None:
    purelib, found = installed
    assert Path(found["package"]) == purelib / "cqox_platform"
    assert found["migrations"] == sorted(p.name for p in (REPO / "sql").glob("*.sql"))
    assert found["sql_readme"]
    assert Path(found["SQL_DIR"]) == purelib / "cqox_platform" / "schema" / "sql"


def test_an_installed_wheel_finds_the_instance_config_with_importlib_resources(
    installed: tuple[Path, dict],
) -> None:
    purelib, found = installed
    assert found["instance_config"] == (REPO / "dagster.yaml").read_text()
    assert Path(found["INSTANCE_CONFIG"]) == purelib / "cqox_platform" / "stack" / "dagster.yaml"


def test_the_wheel_ships_the_json_schemas_of_the_cli(wheel: Path) -> None:
    """Scripts validate `--json` output against these; an editable install would find them in the checkout."""
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (REPO / "cqox_platform" / "cli" / "schemas").glob("*.schema.json"))
    assert {"backup-info.schema.json", "backup-list.schema.json"} <= set(shipped)
    assert {f"cqox_platform/cli/schemas/{name}" for name in shipped} - names == set()


def test_the_wheel_ships_the_grafana_dashboards_and_their_configmaps(wheel: Path) -> None:
    """Grafana and the deploy assets read them from the installed package, not from a checkout."""
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (REPO / "cqox_platform" / "deploy" / "grafana").glob("*.json"))
    assert shipped == ["cqox-backups.json", "cqox-canary.json", "cqox-slos.json"]
    expected = {f"cqox_platform/deploy/grafana/{name}" for name in shipped}
    expected.add("cqox_platform/deploy/k8s/grafana-dashboards.yaml")
    assert expected - names == set()
