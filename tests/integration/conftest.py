"""Every test in this directory is marked ``integration`` (it needs the local stack's real services), and the
fixtures more than one of its modules uses."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import dagster as dg
import pytest

from assets import alerting
from cqox_platform.resources.alertmanager import AlertmanagerResource
from tests.helpers import materialize_vault_config, vault_platform

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marked by where it lives, so ``-m integration`` and ``-m 'not integration'`` select by directory."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def vault_configured(stack) -> dg.ExecuteInProcessResult:
    """``vault_config`` materialized on the session stack: engines, policies, keys and the archiver's settings."""
    result = materialize_vault_config(stack)
    assert result.success
    return result


@pytest.fixture(scope="module")
def alertmanager_routed(stack) -> dict:
    """vault_config (stores the receiver's routing key in Vault KV), then alertmanager_config, in process."""
    assert materialize_vault_config(stack).success
    env = stack.env()
    with mock.patch.dict(os.environ, env), dg.instance_for_test() as instance:
        result = dg.materialize(
            [alerting.alertmanager_config],
            resources={"alertmanager": AlertmanagerResource.from_settings(), "vault": vault_platform(stack)},
            instance=instance,
        )
        logged = "\n".join(entry.message for entry in instance.all_logs(result.run_id))
    assert result.success
    (event,) = result.asset_materializations_for_node("alertmanager_config")
    return {"metadata": event.metadata, "logged": logged, "env": env}
