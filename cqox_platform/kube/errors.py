"""Kubernetes client failures as the platform's errors (raised by ``KubernetesClient``, caught by core code).

Core modules (``cqox_platform.canary``) catch these without importing Dagster; ``KubernetesClient.call``
raises them through ``translate``.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from typing import TypeVar

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from cqox_platform.errors import CqoxError

T = TypeVar("T")


class KubernetesError(CqoxError):
    """The Kubernetes API refused or failed a request."""


class KubernetesUnreachableError(KubernetesError):
    """The API server did not answer, or its certificate did not verify."""


class KubernetesForbiddenError(KubernetesError):
    """RBAC denied the request (403) or the credentials were rejected (401)."""


class KubernetesNotFoundError(KubernetesError):
    """The object or the API does not exist (404)."""


class KubernetesConflictError(KubernetesError):
    """The object changed since it was read (409): re-read and retry."""


class KubernetesInvalidError(KubernetesError):
    """The API server's validation rejected the object (422)."""


def _reason(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or exc.reason or str(exc.status)
    except (ValueError, TypeError):
        return exc.reason or str(exc.status)


def _transport_cause(exc: BaseException) -> BaseException:
    """The underlying failure: urllib3 wraps it in ``MaxRetryError`` once its retries are spent."""
    while isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    return exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return "connect timed out"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return "no answer within the request timeout"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection dropped"
    return type(exc).__name__


def translate(server: str, what: str, fn: Callable[[], T]) -> T:
    """Run one request, mapping client failures to the platform's errors."""
    try:
        return fn()
    except ApiException as exc:
        reason = _reason(exc)
        if exc.status in (401, 403):
            raise KubernetesForbiddenError(f"the API server {server} denied {what}: {reason}") from None
        if exc.status == 404:
            raise KubernetesNotFoundError(f"{what}: not found on {server} ({reason})") from None
        if exc.status == 409:
            raise KubernetesConflictError(
                f"{what}: conflict on {server} ({reason}); re-read the object and retry"
            ) from None
        if exc.status == 422:
            raise KubernetesInvalidError(f"the API server {server} rejected {what}: {reason}") from None
        if not exc.status:
            # The client turns some transport failures (a TLS error on the first try) into a status-0 exception.
            if "SSL" in str(exc.reason):
                raise KubernetesUnreachableError(
                    f"TLS to the API server {server} failed while {what}: its certificate did not verify against "
                    f"the kubeconfig's CA ({str(exc.reason).splitlines()[-1]})."
                ) from None
            raise KubernetesUnreachableError(
                f"the API server {server} is unreachable while {what} ({reason}); is it running? "
                f"(`cqox-platform stack status`)"
            ) from None
        raise KubernetesError(f"{what} failed on {server}: HTTP {exc.status} {reason}") from None
    except ResourceNotFoundError:
        raise KubernetesNotFoundError(
            f"{what}: the API server {server} serves no such API; is its CustomResourceDefinition installed?"
        ) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        cause = _transport_cause(exc)
        if isinstance(cause, urllib3.exceptions.SSLError | ssl.SSLError):
            raise KubernetesUnreachableError(
                f"TLS to the API server {server} failed while {what}: its certificate did not verify against the "
                f"kubeconfig's CA ({cause})."
            ) from None
        raise KubernetesUnreachableError(
            f"the API server {server} is unreachable while {what} ({_describe(cause)}); is it running? "
            f"(`cqox-platform stack status`)"
        ) from None
