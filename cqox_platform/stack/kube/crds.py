"""Install the CustomResourceDefinitions in ``stack/crds`` into an API server: the Istio, CloudNativePG and
Prometheus-operator kinds the platform writes.

Server-side apply with one field manager makes the install idempotent: re-applying an unchanged file changes
nothing, and an edited file updates the CRD in place. The install waits until every CRD is ``Established``, so a
client may create VirtualServices as soon as ``stack up`` returns.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cqox_platform.errors import ServiceStartError

FIELD_MANAGER = "cqox-platform"


def load_crds(directory: Path) -> list[dict]:
    """Every CRD document of the directory's ``*.yaml`` files, in file order."""
    crds: list[dict] = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc.get("kind") != "CustomResourceDefinition":
                raise ServiceStartError(f"{path} holds a {doc.get('kind')!r}; stack/crds is for CRDs only.")
            crds.append(doc)
    return crds


def apply_crds(api_client: client.ApiClient, directory: Path, *, timeout: float = 60.0) -> list[str]:
    """Server-side apply each CRD and wait until all are established; returns their names."""
    api = client.ApiextensionsV1Api(api_client)
    names: list[str] = []
    for crd in load_crds(directory):
        name = crd["metadata"]["name"]
        try:
            api.patch_custom_resource_definition(
                name,
                crd,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        except ApiException as exc:
            raise ServiceStartError(
                f"applying CRD {name} from {directory} failed: HTTP {exc.status} {exc.reason}: {exc.body}"
            ) from None
        names.append(name)
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending:
        pending = [name for name in pending if not _established(api, name)]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise ServiceStartError(f"CRDs not established after {timeout:.0f} s: {', '.join(pending)}")
        time.sleep(0.2)
    return names


def _established(api: client.ApiextensionsV1Api, name: str) -> bool:
    conditions = api.read_custom_resource_definition_status(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)
