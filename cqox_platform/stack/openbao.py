"""OpenBao (the Vault API) of the local stack: raft storage, TLS listener, initialised and unsealed by us.

The single unseal key and the root token are written to ``secrets/openbao-init.json`` (mode 0600). That is
acceptable only because this is a local development stack; production unseals with a KMS or Shamir holders
and never keeps the root token. A restart keeps the raft data; ``up`` unseals it again.
"""

from __future__ import annotations

import json

import requests

from cqox_platform.errors import ServiceStartError
from cqox_platform.fsutil import write_private
from cqox_platform.stack.certs import tls_files
from cqox_platform.stack.process import find_binary, spawn, wait_until
from cqox_platform.stack.service import Service


class OpenBaoService(Service):
    name = "openbao"
    binaries = ("bao",)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def init_file(self):
        return self.stack.secrets_dir / "openbao-init.json"

    @property
    def audit_log(self):
        return self.home / "audit.log"

    @property
    def ca_cert(self) -> str:
        return str(tls_files(self.stack.tls_dir).ca_cert)

    def _health(self) -> int:
        """HTTP code of /v1/sys/health: 200 active, 429 standby, 501 uninitialised, 503 sealed."""
        return requests.get(f"{self.url}/v1/sys/health", verify=self.ca_cert, timeout=3).status_code

    def healthy(self) -> bool:
        return self._health() == 200

    def _listening(self) -> bool:
        self._health()
        return True

    def write_config(self) -> None:
        tls = tls_files(self.stack.tls_dir)
        data_dir = self.home / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        cluster_port = self.stack.ports["openbao_cluster"]
        (self.home / "config.hcl").write_text(
            f"""# Written by cqox-platform stack; changes are overwritten on `stack up`.
ui = false
storage "raft" {{
  path                   = "{data_dir}"
  node_id                = "cqox-local-1"
  performance_multiplier = 1
}}
listener "tcp" {{
  address         = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_cert_file   = "{tls.server_cert}"
  tls_key_file    = "{tls.server_key}"
  tls_min_version = "tls13"
  # Prometheus scrapes /v1/sys/metrics without a token (metrics only; no secret is in them).
  telemetry {{
    unauthenticated_metrics_access = true
  }}
}}
telemetry {{
  prometheus_retention_time = "60s"
  disable_hostname          = true
}}
api_addr     = "https://127.0.0.1:{self.port}"
cluster_addr = "https://127.0.0.1:{cluster_port}"

# OpenBao only enables audit devices declared here (the API refuses); values are HMAC-ed in the log.
audit "file" "file" {{
  description = "cqox-platform request audit"
  options {{
    file_path = "{self.audit_log}"
    mode      = "0600"
  }}
}}
"""
        )

    def start(self) -> None:
        self.write_config()
        pid = spawn(
            [find_binary("bao"), "server", f"-config={self.home / 'config.hcl'}"],
            log_path=self.log_path,
        )
        self.write_pid(pid)
        wait_until(
            self._listening,
            timeout=self.start_timeout,
            what="OpenBao listener",
            log_path=self.log_path,
            alive=self.running,
        )

    def after_start(self) -> None:
        """Initialise once, then unseal with the stored key and wait until the node is active."""
        code = self._health()
        if code == 501:
            response = requests.put(
                f"{self.url}/v1/sys/init",
                json={"secret_shares": 1, "secret_threshold": 1},
                verify=self.ca_cert,
                timeout=60,
            )
            response.raise_for_status()
            body = response.json()
            write_private(
                self.init_file, json.dumps({"unseal_keys_b64": body["keys_base64"], "root_token": body["root_token"]})
            )
            code = self._health()
        if code == 503:
            if not self.init_file.exists():
                raise ServiceStartError(
                    f"OpenBao at {self.url} is initialised but sealed and {self.init_file} (its unseal key) is "
                    f"missing. Restore that file, or remove {self.home / 'data'} to start an empty OpenBao."
                )
            keys = json.loads(self.init_file.read_text())["unseal_keys_b64"]
            for key in keys:
                response = requests.put(f"{self.url}/v1/sys/unseal", json={"key": key}, verify=self.ca_cert, timeout=10)
                if response.status_code != 200:
                    raise ServiceStartError(
                        f"OpenBao at {self.url} refused the unseal key from {self.init_file} "
                        f"(HTTP {response.status_code}); the key file does not belong to this data directory."
                    )
        # Right after unseal the raft node is a standby for a moment and rejects writes: wait for active.
        wait_until(self.healthy, timeout=30, what="OpenBao becoming active after unseal", log_path=self.log_path)

    def env(self) -> dict[str, str]:
        return {
            "VAULT_ADDR": self.url,
            "VAULT_CACERT": self.ca_cert,
            "BAO_ADDR": self.url,
            "BAO_CACERT": self.ca_cert,
            "CQOX_VAULT_ROOT_TOKEN_FILE": str(self.init_file),
            "CQOX_VAULT_APPROLE_FILE": str(self.stack.secrets_dir / "vault-approle.json"),
            "CQOX_VAULT_SNAPSHOT_APPROLE_FILE": str(self.stack.secrets_dir / "vault-snapshot-approle.json"),
            # The stack's escrow is its own key file: a restore drill unseals a scratch copy with it. Production
            # sets shamir, transit or kms instead (docs/vault-recovery.md).
            "CQOX_VAULT_UNSEAL_MODE": "key_file",
            "CQOX_VAULT_UNSEAL_KEY_FILE": str(self.init_file),
            "CQOX_VAULT_AUDIT_LOG": str(self.audit_log),
        }
