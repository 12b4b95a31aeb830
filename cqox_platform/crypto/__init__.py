"""Envelope encryption: streaming AES-256-GCM objects, manifests, data keys from Vault Transit."""

from cqox_platform.crypto.envelope import Manifest, decrypt_file, decrypt_from, encrypt_file, encrypt_to
from cqox_platform.crypto.keys import DataKey, DataKeyProvider

__all__ = ["DataKey", "DataKeyProvider", "Manifest", "decrypt_file", "decrypt_from", "encrypt_file", "encrypt_to"]
