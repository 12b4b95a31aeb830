"""Kubernetes manifests of ``deploy/k8s``: rendered, applied by server-side apply, and compared with live objects.

The files are plain YAML with ``${NAMESPACE}``-style placeholders (namespace and images only), so what is
applied is what a reviewer reads. Drift compares only what a manifest sets: the API server adds defaults
(``terminationMessagePath``, a Service's ``protocol``, the HPA's scaling policies) and status, and none of that is
drift. A list is compared item by item and must keep its length.

Some fields belong to another writer once the object exists: the canary router moves the VirtualService's
weights and sets the canary's image. A manifest lists such fields in the annotation
``platform.cqox.io/runtime-owned`` (comma-separated paths, ``[*]`` for any list item). An apply then keeps the
live values of those fields, and drift ignores them, so re-applying the manifests never resets a rollout.
"""

from __future__ import annotations

import copy
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from cqox_platform.errors import CqoxError
from cqox_platform.package_data import package_path

MANIFEST_DIR = package_path("cqox_platform.deploy", "k8s")
RUNTIME_OWNED = "platform.cqox.io/runtime-owned"
#: What drift compares besides the top-level fields other than these (``spec``, ``data``, ...).
COMPARED_METADATA = ("labels", "annotations")
IGNORED_TOP_LEVEL = ("apiVersion", "kind", "metadata", "status")


class ManifestError(CqoxError):
    """A manifest file does not render to Kubernetes objects; the message names the file and the problem."""


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()


# --- rendering ------------------------------------------------------------------------------------------------


def render(path: Path, values: Mapping[str, str]) -> list[dict[str, Any]]:
    """The objects of one manifest file with its ``${NAME}`` placeholders substituted from ``values``."""
    try:
        text = string.Template(path.read_text()).substitute(values)
    except KeyError as exc:
        raise ManifestError(
            f"{path}: placeholder ${{{exc.args[0]}}} has no value; known: {', '.join(sorted(values))}"
        ) from None
    except ValueError as exc:
        raise ManifestError(f"{path}: {exc} (a literal $ is written $$)") from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror}") from None
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not YAML after substitution: {exc}") from None
    for i, doc in enumerate(docs):
        missing = [k for k in ("apiVersion", "kind") if not isinstance(doc.get(k), str)]
        if not isinstance(doc.get("metadata"), dict) or not doc["metadata"].get("name"):
            missing.append("metadata.name")
        if missing:
            raise ManifestError(f"{path}: document {i + 1} lacks {', '.join(missing)}")
    return docs


def identity(obj: Mapping[str, Any]) -> str:
    """``Kind/namespace/name`` (``Kind/name`` for cluster-scoped objects), as operators read it."""
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{obj['kind']}/{ns}/{meta['name']}" if ns else f"{obj['kind']}/{meta['name']}"


# --- paths ----------------------------------------------------------------------------------------------------


def _key(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


def runtime_owned(manifest: Mapping[str, Any]) -> list[str]:
    """The field paths the manifest leaves to other writers once the object exists."""
    raw = (manifest.get("metadata", {}).get("annotations") or {}).get(RUNTIME_OWNED, "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for token in re.split(r"(\[\*\]|\[\d+\])", pattern):
        if token == "[*]":
            parts.append(r"\[\d+\]")
        elif token:
            parts.append(re.escape(token))
    # The field itself or anything below it.
    return re.compile("".join(parts) + r"(?:[.\[].*)?")


def _tokens(pattern: str) -> list[str | int | None]:
    """``spec.http[*].weight`` -> ``["spec", "http", None, "weight"]`` (``None``: every list item)."""
    tokens: list[str | int | None] = []
    for part in re.findall(r"[^.\[\]]+|\[\*\]|\[\d+\]", pattern):
        if part == "[*]":
            tokens.append(None)
        elif part.startswith("["):
            tokens.append(int(part[1:-1]))
        else:
            tokens.append(part)
    return tokens


def _concrete(obj: Any, tokens: list[str | int | None], prefix: tuple = ()) -> Iterable[tuple]:
    """Every concrete path in ``obj`` a pattern's tokens match."""
    if not tokens:
        yield prefix
        return
    head, rest = tokens[0], tokens[1:]
    if head is None:
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                yield from _concrete(item, rest, (*prefix, i))
    elif isinstance(head, int):
        if isinstance(obj, list) and head < len(obj):
            yield from _concrete(obj[head], rest, (*prefix, head))
    elif isinstance(obj, dict) and head in obj:
        yield from _concrete(obj[head], rest, (*prefix, head))


def _lookup(obj: Any, path: tuple) -> Any:
    for step in path:
        if isinstance(step, int):
            if not isinstance(obj, list) or step >= len(obj):
                return ABSENT
        elif not isinstance(obj, dict) or step not in obj:
            return ABSENT
        obj = obj[step]
    return obj


def keep_runtime_owned(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> dict[str, Any]:
    """``desired`` with the live values of its runtime-owned fields, so applying it does not reset them."""
    body = copy.deepcopy(dict(desired))
    if not live:
        return body
    for pattern in runtime_owned(desired):
        for path in list(_concrete(body, _tokens(pattern))):
            value = _lookup(live, path)
            if value is not ABSENT:
                parent = _lookup(body, path[:-1])
                parent[path[-1]] = copy.deepcopy(value)
    return body


# --- drift ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One field whose live value is not the desired one (``live`` is ``ABSENT`` when the field is missing)."""

    path: str
    desired: Any
    live: Any

    def __str__(self) -> str:
        return f"{self.path}: desired {_short(self.desired)}, live {_short(self.live)}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _compare(desired: Any, live: Any, path: str, out: list[Difference]) -> None:
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            out.append(Difference(path, desired, live))
            return
        for key, value in desired.items():
            sub = _key(path, str(key))
            if key not in live:
                out.append(Difference(sub, value, ABSENT))
            else:
                _compare(value, live[key], sub, out)
    elif isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            out.append(Difference(path, desired, live))
            return
        for i, (d, item) in enumerate(zip(desired, live, strict=True)):
            _compare(d, item, f"{path}[{i}]", out)
    elif desired != live or isinstance(desired, bool) != isinstance(live, bool):
        out.append(Difference(path, desired, live))


def drift(desired: Mapping[str, Any], live: Mapping[str, Any]) -> list[Difference]:
    """The fields ``desired`` sets that differ in ``live``, runtime-owned fields excepted."""
    out: list[Difference] = []
    for key, value in desired.items():
        if key in IGNORED_TOP_LEVEL:
            continue
        _compare(value, live.get(key, ABSENT), key, out)
    meta, live_meta = desired.get("metadata", {}), live.get("metadata", {})
    for key in COMPARED_METADATA:
        if key in meta:
            _compare(meta[key] or {}, live_meta.get(key) or {}, f"metadata.{key}", out)
    ignored = [_pattern_regex(p) for p in runtime_owned(desired)]
    return [d for d in out if not any(rx.fullmatch(d.path) for rx in ignored)]


# --- applying -------------------------------------------------------------------------------------------------


class KubeClient(Protocol):
    """What applying and checking need of a client: ``KubernetesResource`` is one."""

    def find(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None: ...

    def apply(self, manifest: dict[str, Any], *, force: bool = True) -> dict[str, Any]: ...


@dataclass
class AppliedObject:
    """One object after its apply: what it was, what changed, and its version on the server."""

    kind: str
    name: str
    namespace: str | None
    action: str  # created | updated | unchanged
    resource_version: str
    generation: int | None
    changes: list[Difference] = field(default_factory=list)

    @property
    def identity(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "namespace": self.namespace,
            "action": self.action,
            "resourceVersion": self.resource_version,
            "generation": self.generation,
            "changed_paths": [c.path for c in self.changes],
        }


def _get(kube: KubeClient, manifest: Mapping[str, Any]) -> dict | None:
    meta = manifest["metadata"]
    return kube.find(manifest["apiVersion"], manifest["kind"], meta["name"], meta.get("namespace"))


def apply_manifests(kube: KubeClient, manifests: Iterable[Mapping[str, Any]]) -> list[AppliedObject]:
    """Server-side apply each manifest in order, keeping runtime-owned fields; says what each apply changed."""
    results: list[AppliedObject] = []
    for manifest in manifests:
        live = _get(kube, manifest)
        body = keep_runtime_owned(manifest, live)
        changes = drift(body, live) if live is not None else []
        applied = kube.apply(body)
        meta = applied["metadata"]
        # Controllers bump resourceVersion all the time (status, scale): a change is a field or a new generation.
        if live is None:
            action = "created"
        elif changes or meta.get("generation") != live["metadata"].get("generation"):
            action = "updated"
        else:
            action = "unchanged"
        results.append(
            AppliedObject(
                kind=applied["kind"],
                name=meta["name"],
                namespace=meta.get("namespace"),
                action=action,
                resource_version=meta["resourceVersion"],
                generation=meta.get("generation"),
                changes=changes,
            )
        )
    return results


@dataclass
class DriftReport:
    """The live state of one manifest's object against the desired one."""

    identity: str
    present: bool
    differences: list[Difference]
    resource_version: str | None = None

    @property
    def in_sync(self) -> bool:
        return self.present and not self.differences


def check_drift(kube: KubeClient, manifests: Iterable[Mapping[str, Any]]) -> list[DriftReport]:
    """Each desired object compared with the live one (absent objects are drift too)."""
    reports = []
    for manifest in manifests:
        live = _get(kube, manifest)
        if live is None:
            reports.append(DriftReport(identity(manifest), present=False, differences=[]))
        else:
            reports.append(
                DriftReport(
                    identity(manifest),
                    present=True,
                    differences=drift(manifest, live),
                    resource_version=live["metadata"]["resourceVersion"],
                )
            )
    return reports
