"""Tiny in-memory stand-ins for the resources, for the fast tests of the Dagster wiring.

Each subclasses the real ``ConfigurableResource`` and overrides only the public methods the assets and sensors
call, so a test proves the wiring (config, resource keys, metadata, checks, run requests) in milliseconds. What
the services themselves do is proven by the integration tests against the real ones.

Dagster copies a resource when it initialises it for a run, so state that must outlive one run (the objects an
apply stored) lives in a class-level dict that each test resets.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, ClassVar

from dagster_aws.s3 import S3Resource

from cqox_platform.resources.kubernetes import KubernetesResource
from cqox_platform.resources.patroni import PatroniResource
from cqox_platform.resources.prometheus import PrometheusResource


class FakeKubernetes(KubernetesResource):
    """An API server in a dict: server-side apply stores the manifest, bumping generation when it changes."""

    objects: ClassVar[dict[tuple, dict[str, Any]]] = {}
    applies: ClassVar[int] = 0

    @classmethod
    def reset(cls) -> None:
        cls.objects = {}
        cls.applies = 0

    @property
    def server(self) -> str:
        return "memory://fake-kubernetes"

    @staticmethod
    def _key(api_version: str, kind: str, name: str, namespace: str | None) -> tuple:
        return (api_version, kind, namespace, name)

    def find(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        found = self.objects.get(self._key(api_version, kind, name, namespace))
        return copy.deepcopy(found)

    def apply(self, manifest: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        type(self).applies += 1
        meta = manifest["metadata"]
        key = self._key(manifest["apiVersion"], manifest["kind"], meta["name"], meta.get("namespace"))
        live = copy.deepcopy(manifest)
        before = self.objects.get(key)
        body = {k: v for k, v in manifest.items() if k != "metadata"}
        old_body = {k: v for k, v in (before or {}).items() if k not in ("metadata", "status")}
        generation = 1 if before is None else before["metadata"]["generation"] + (body != old_body)
        live["metadata"] = {**meta, "generation": generation, "resourceVersion": str(type(self).applies)}
        self.objects[key] = live
        return copy.deepcopy(live)


class FakePrometheus(PrometheusResource):
    """Instant queries answered from a table of expression substrings; rule files kept in memory."""

    answers: ClassVar[dict[str, float]] = {}
    installed: ClassVar[dict[str, str]] = {}

    @classmethod
    def reset(cls, answers: dict[str, float] | None = None) -> None:
        cls.answers = dict(answers or {})
        cls.installed = {}

    def query(self, expr: str, at=None) -> list[dict]:
        for fragment, value in self.answers.items():
            if fragment in expr:
                return [{"metric": {}, "value": [0, str(value)]}]
        return []

    def install_rules(self, filename: str, text: str) -> list[str]:
        self.installed[filename] = text
        return [f"{filename}:group"]


class FakePatroni(PatroniResource):
    """A Patroni cluster whose leader, timeline and system identifier (``GET /patroni``) a test sets."""

    cluster_state: ClassVar[SimpleNamespace] = SimpleNamespace(timeline=1, leader="node1", answered_by="fake")
    system_id: ClassVar[str] = "7300000000000000001"

    def client(self):  # type: ignore[override]
        state, system_id = self.cluster_state, self.system_id
        return SimpleNamespace(cluster=lambda: state, system_identifier=lambda cluster: system_id)


class FakeS3(S3Resource):
    """A bucket listing: ``list_objects_v2`` pages over the objects a test puts in ``listing`` (key -> ETag)."""

    listing: ClassVar[dict[str, str]] = {}

    def get_client(self):  # type: ignore[override]
        contents = [{"Key": k, "ETag": f'"{etag}"'} for k, etag in sorted(self.listing.items())]

        def paginate(Bucket: str, Prefix: str):
            yield {"Contents": [c for c in contents if c["Key"].startswith(Prefix)]}

        return SimpleNamespace(get_paginator=lambda name: SimpleNamespace(paginate=paginate))
