"""The base of resources built from the settings contract: unset values fail at first use, not at load.

The code location must load with no environment at all (a newcomer's ``dagster definitions validate``), so
``from_settings`` never raises for a missing value: it records the field in ``unset_settings``, and the run that
initialises the resource (``setup_for_execution``) or the first ``client()`` call fails with the settings'
own one-line ``SettingsError`` naming the variable to set.
"""

from __future__ import annotations

import dagster as dg

from cqox_platform.settings import Settings


def unset(settings: Settings, *fields: str) -> list[str]:
    """The given settings fields that hold no value."""
    return [f for f in fields if getattr(settings, f) in (None, "")]


def path_str(value: object) -> str | None:
    """A path setting as a resource's string field (``None`` stays ``None``)."""
    return str(value) if value else None


def require_set(fields: list[str]) -> None:
    """Raise ``Settings.require``'s error for the first unset field (the message lives in one place)."""
    for field in fields:
        Settings.model_construct(**{field: None}).require(field)


class SettingsBackedResource(dg.ConfigurableResource):
    #: Settings fields this resource needs that were not set when it was built (checked at first use).
    unset_settings: list[str] = []

    def require_settings(self) -> None:
        require_set(self.unset_settings)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.require_settings()
