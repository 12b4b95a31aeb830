"""The environment the site-loss recovery runs in, and its refusal to run in any other.

A site-loss drill proves a recovery from the DR copy and the escrow only if nothing else was at hand. The
recovery therefore runs as its own process whose environment is built here from scratch: a search path, a
locale and a temporary directory. Every credential and address of the running site (the platform's
``CQOX_*`` settings, ``AWS_*`` keys and profiles, ``VAULT_*``/``BAO_*`` tokens, libpq's ``PG*``) is absent, so
no client in it can find the primary's S3 keys, a token of the running OpenBao or the running PostgreSQL. The
recovery checks that on start and refuses an environment that carries any of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cqox_platform.errors import CqoxError

#: Variable prefixes that reach the running site: settings, S3 keys and profiles, Vault tokens, libpq.
FORBIDDEN_PREFIXES = ("CQOX_", "AWS_", "VAULT_", "BAO_", "PG")
#: What the recovery may inherit: how to find programs, the locale.
INHERITED = ("PATH", "LANG", "LC_ALL")


class NotIsolatedError(CqoxError):
    """The recovery was started with a way to reach the running site in its environment."""


def isolated_env(tmpdir: str, parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of the recovery process: nothing of ``parent`` (default: this process's) but
    ``INHERITED``, and ``tmpdir`` as its HOME and TMPDIR (no ``~/.aws`` or ``~/.vault-token`` to find)."""
    source = os.environ if parent is None else parent
    env = {name: source[name] for name in INHERITED if name in source}
    env.setdefault("PATH", "/usr/bin:/bin")
    env.update(HOME=tmpdir, TMPDIR=tmpdir, PYTHONNOUSERSITE="1")
    return env


def leaks(env: Mapping[str, str]) -> list[str]:
    """Names in ``env`` that would reach the running site (the values are never read)."""
    return sorted(name for name in env if name.startswith(FORBIDDEN_PREFIXES))


def require_isolated(env: Mapping[str, str] | None = None) -> None:
    """Refuse to recover with any of the running site's variables in ``env`` (default: this process's)."""
    found = leaks(os.environ if env is None else env)
    if found:
        raise NotIsolatedError(
            f"the site-loss recovery refuses to run with {', '.join(found)} in its environment: they reach the "
            "running site, so the drill would not prove a recovery from the DR copy alone. Start it through the "
            "site_loss_drill asset, which builds its environment from nothing."
        )
