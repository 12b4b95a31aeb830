"""What pyproject.toml cannot declare: the package list with one mapped data package, and one file copied in.

The migrations (``sql/``) and the local Dagster instance config (``dagster.yaml``) live at the top of the
repository, where the project's layout names them, and ship inside the package, where an installed platform finds
them with ``importlib.resources`` (``cqox_platform/package_data.py``):

- ``sql/`` is the package ``cqox_platform.schema.sql`` (``[tool.setuptools.package-dir]`` in pyproject.toml). A
  mapped package must be listed, and pyproject.toml can either list packages or discover them, not both: the list
  is discovery as before plus that one. An editable install maps it as well, so new migrations need no reinstall.
- ``dagster.yaml`` is a single file, which no package mapping expresses: ``build_py`` copies it to
  ``cqox_platform/stack/dagster.yaml`` in the wheel. An editable install copies nothing and reads the checkout's
  file (``package_data.instance_config``), so an edit is never shadowed by a stale copy.

``tests/unit/test_wheel.py`` builds a wheel, installs it into a fresh virtualenv and lists both from there.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py

INSTANCE_CONFIG = "dagster.yaml"
PACKAGED_INSTANCE_CONFIG = ("cqox_platform", "stack", "dagster.yaml")


class BuildPyWithInstanceConfig(build_py):
    """``build_py`` that also puts the top-level ``dagster.yaml`` into the built package."""

    def _instance_config_target(self) -> str:
        return str(Path(self.build_lib, *PACKAGED_INSTANCE_CONFIG))

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            target = self._instance_config_target()
            self.mkpath(str(Path(target).parent))
            self.copy_file(INSTANCE_CONFIG, target, preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        return outputs if self.editable_mode else [*outputs, self._instance_config_target()]


setup(
    packages=[
        *find_namespace_packages(
            include=["cqox_platform*", "assets*", "sensors*"],
            # npm's dependencies of the PGlite server are not Python packages.
            exclude=["*.node_modules", "*.node_modules.*"],
        ),
        "cqox_platform.schema.sql",
    ],
    cmdclass={"build_py": BuildPyWithInstanceConfig},
)
