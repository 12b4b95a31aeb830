"""Typed errors of the platform.

Every message says what failed, where, and what to do next, so a person reading a Dagster run failure or a
CLI error does not need the traceback. No message may contain a secret.
"""

from __future__ import annotations


class CqoxError(Exception):
    """Base class of every error the platform raises on purpose."""


# --- the local stack -----------------------------------------------------------------------------------------


class StackError(CqoxError):
    """The local stack could not do what was asked."""


class MissingBinaryError(StackError):
    """A program the stack needs is not installed; the message names the package that provides it."""


class PortInUseError(StackError):
    """A port the stack wants is already taken; the message names the port and the process holding it."""


class StackDirError(StackError):
    """The stack directory is not usable (read-only, full, not reachable by a service user)."""


class ServiceStartError(StackError):
    """A service did not become healthy; the message points at its log file."""


# --- schema and migrations -----------------------------------------------------------------------------------


class MigrationError(CqoxError):
    """A migration could not be discovered or applied. Nothing was changed by the failing file."""


class MigrationChecksumError(MigrationError):
    """An already-applied migration file was edited after it was released."""


class MigrationFailedError(MigrationError):
    """A migration file raised an error; its transaction was rolled back."""


class SchemaDriftError(CqoxError):
    """The database schema differs from what the migrations in ``sql/`` describe."""


# --- encryption ----------------------------------------------------------------------------------------------


class CryptoError(CqoxError):
    """An object could not be encrypted or decrypted."""


class IntegrityError(CryptoError):
    """Ciphertext failed authentication: tampered, truncated, reordered, spliced or the wrong key."""


class FormatError(CryptoError):
    """The bytes are not an object of the envelope format, or of a version this code does not read."""


class ManifestMismatchError(CryptoError):
    """The manifest describes a different object than the data object it was paired with."""


# --- backups -------------------------------------------------------------------------------------------------


class BackupError(CqoxError):
    """Root of every backup error: archiving WAL, taking, restoring, verifying or expiring a backup.

    Each sub-package raises its own subclass (``ArchiveError``, ``WalConflictError``, ``RestoreError``, ...), so a
    caller can catch one job's failures or any backup failure.
    """


class RestoreError(BackupError):
    """A restore could not complete; the message names the object or the step."""


# --- Vault ---------------------------------------------------------------------------------------------------


class VaultError(CqoxError):
    """Vault (OpenBao) refused or failed a request; never falls back to plaintext."""


class VaultSealedError(VaultError):
    """Vault is sealed: unseal it (`cqox-platform stack up` does for the local stack)."""


class VaultUnreachableError(VaultError):
    """Vault cannot be reached at its address (down, wrong address, TLS failure)."""


class VaultPermissionError(VaultError):
    """The token's policies do not allow the request."""


class VaultNotFoundError(VaultError):
    """The secret, key or path does not exist."""


class VaultRecoveryError(VaultError):
    """A Vault snapshot could not be taken, stored, found or restored; the message names the object or step."""


class SnapshotIntegrityError(VaultRecoveryError):
    """A stored snapshot's bytes do not match the SHA-256 and size recorded when it was uploaded."""


# --- datasets ------------------------------------------------------------------------------------------------


class DatasetError(CqoxError):
    """A dataset could not be ingested, read or rotated."""


class InvalidDatasetNameError(DatasetError):
    """A dataset name that could escape its prefix or break a query."""


class DatasetValidationError(DatasetError):
    """An upload does not match the CQOx dataset schema; ``problems`` lists every reason."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


# --- canary, high availability, alerting ----------------------------------------------------------------------


class CanaryError(CqoxError):
    """Root of every canary error: a policy, a decision's evidence, a route, a rollout's state or a promotion."""


class HaError(CqoxError):
    """Root of every high-availability error: Patroni, a switchover or reinit, a partition drill."""


class AlertingError(CqoxError):
    """Root of every alerting error: routing, rules, Alertmanager, alert drills."""


# --- SLOs ----------------------------------------------------------------------------------------------------


class SloSpecError(CqoxError):
    """An SLO spec file is malformed; the message names the file, line and field."""


class RuleValidationError(CqoxError):
    """Generated Prometheus rules failed `promtool check rules` or `promtool test rules`."""
