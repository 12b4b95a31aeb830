"""Data files shipped inside the package, found with ``importlib.resources`` wherever the package is installed.

What the platform reads at run time lives next to the code that reads it and is declared as package data in
pyproject.toml, so a wheel, an editable install and a container image all carry it:

- ``schema/sql/``: the migrations (``cqox_platform.schema.migrations.SQL_DIR``);
- ``slo/slos.yaml``: the default SLO spec (``cqox_platform.slo.spec.DEFAULT_SPEC``);
- ``canary/policies/``: canary policies, one per service (``cqox_platform.canary.policy.POLICY_DIR``);
- ``deploy/k8s/``: the Kubernetes manifests the deploy assets apply (``cqox_platform.deploy.manifests.MANIFEST_DIR``);
- ``secrets/policies/``: Vault policies (``cqox_platform.secrets.vault_setup.POLICY_DIR``);
- ``alerts/``: Prometheus alert rules (``cqox_platform.alerts.BACKUP_ALERT_RULES``) and Alertmanager routing
  (``cqox_platform.alerts.ROUTING_SPEC``);
- ``stack/dagster.yaml`` and ``stack/crds/``: the local stack's instance config and the CRDs it installs.

What belongs to the checkout stays at the repository root: ``workspace.yaml`` (for ``dagster dev`` there),
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
