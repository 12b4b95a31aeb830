"""Data files shipped inside the package, found with ``importlib.resources`` wherever the package is installed.

What the platform reads at run time is declared as package data in pyproject.toml, so a wheel, an editable install
and a container image all carry it. Most of it lives next to the code that reads it:

- ``slo/slos.yaml``: the default SLO spec (``cqox_platform.slo.spec.DEFAULT_SPEC``);
- ``canary/policies/``: canary policies, one per service (``cqox_platform.canary.policy.POLICY_DIR``);
- ``deploy/k8s/``: the Kubernetes manifests the deploy assets apply (``cqox_platform.deploy.manifests.MANIFEST_DIR``);
- ``deploy/grafana/``: the Grafana dashboards (``cqox_platform.deploy.dashboards.DASHBOARD_DIR``);
- ``secrets/policies/``: Vault policies (``cqox_platform.secrets.vault_setup.POLICY_DIR``);
- ``alerts/``: Prometheus alert rules (``cqox_platform.alerts.BACKUP_ALERT_RULES``) and Alertmanager routing
  (``cqox_platform.alerts.ROUTING_SPEC``);
- ``stack/crds/``: the CRDs the local stack installs;
- ``cli/schemas/``: JSON Schemas of the CLI's ``--json`` output (``cqox_platform.cli.json_schema.schema_path``).

Two are kept at the top of the repository, where the project's layout names them, and the build puts them into the
package (setup.py says how):

- ``sql/`` is the package ``cqox_platform.schema.sql``: the migrations (``cqox_platform.schema.migrations.SQL_DIR``);
- ``dagster.yaml`` becomes ``stack/dagster.yaml`` in a wheel: the local stack's instance config
  (:func:`instance_config`).

What belongs to the checkout only stays at the repository root: ``workspace.yaml`` (for ``dagster dev`` there),
``deploy/dagster/`` (production instance config, applied with kubectl) and ``deploy/kube-build/`` (inputs of
``scripts/build-kube.sh``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def package_path(package: str, *parts: str) -> Path:
    """The file or directory ``parts`` inside ``package`` as a filesystem path.

    pip installs packages as files, never zipped, so ``files()`` is a real directory: tools outside Python
    (promtool, the migration runner's ``glob``) can read it. A zipped install is refused with a clear error
    instead of paths that exist only inside Python.
    """
    location = files(package).joinpath(*parts)
    if not isinstance(location, Path):
        raise RuntimeError(f"{package} is not installed as files on disk ({location!r}); install it with pip.")
    return location


def instance_config() -> Path:
    """The local stack's Dagster instance config: the checkout's ``dagster.yaml`` or the wheel's copy of it.

    The file's source is the repository's top-level ``dagster.yaml``. A wheel carries a copy at
    ``cqox_platform/stack/dagster.yaml`` (setup.py's ``build_py``); an editable install copies nothing, so in a
    checkout (the package's parent directory holds ``pyproject.toml``) the repository's file is the one, and an
    edit to it counts at the next ``stack up`` without reinstalling.
    """
    package_dir = package_path("cqox_platform")
    checkout = package_dir.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "dagster.yaml").is_file():
        return checkout / "dagster.yaml"
    packaged = package_path("cqox_platform.stack", "dagster.yaml")
    if not packaged.is_file():
        raise RuntimeError(
            f"the local stack's Dagster instance config is missing: neither {checkout / 'dagster.yaml'} (a checkout) "
            f"nor {packaged} (an installed wheel) exists; reinstall cqox-platform (pip install .) or run from a "
            "checkout of the repository."
        )
    return packaged
