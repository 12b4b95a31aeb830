"""The synthetic CQOx traffic exporter as a stack service (``stack up --traffic``), scraped by Prometheus.

Prometheus discovers it through a file_sd target file, so adding or removing the exporter needs no reload.
Change its traffic at run time: ``curl -X PUT $CQOX_TRAFFIC_URL/config -d '{"canary": {"error_ratio": 0.05}}'``.
"""

from __future__ import annotations

import json
import sys

import requests

from cqox_platform.stack.process import spawn, wait_until
from cqox_platform.stack.service import Service


class TrafficService(Service):
    name = "traffic"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target_file(self):
        return self.stack.path("prometheus", "targets", "cqox-traffic.json")

    def healthy(self) -> bool:
        return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def start(self) -> None:
        pid = spawn([sys.executable, "-m", "cqox_platform.slo.traffic", str(self.port)], log_path=self.log_path)
        self.write_pid(pid)
        wait_until(
            self.healthy,
            timeout=self.start_timeout,
            what="traffic exporter",
            log_path=self.log_path,
            alive=self.running,
        )

    def after_start(self) -> None:
        self.target_file.parent.mkdir(parents=True, exist_ok=True)
        self.target_file.write_text(json.dumps([{"targets": [f"127.0.0.1:{self.port}"], "labels": {}}]))

    def stop(self) -> None:
        self.target_file.unlink(missing_ok=True)
        super().stop()

    def env(self) -> dict[str, str]:
        return {"CQOX_TRAFFIC_URL": self.url}
