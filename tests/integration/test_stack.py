"""The local stack's promises, checked against the running services."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import hvac
import psycopg
import pytest
import requests

from cqox_platform.errors import MissingBinaryError, PortInUseError, StackDirError
from cqox_platform.pgserver import free_port
from cqox_platform.stack import Stack, StackConfig
from cqox_platform.stack.config import BACKUP_BUCKET, DEFAULT_PORTS, DR_BUCKET
from cqox_platform.stack.s3 import client_config
from tests.helpers import distinct_free_ports, make_world_traversable_tmpdir

CLI = [sys.executable, "-m", "cqox_platform.cli"]


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "stack", *args, "--dir", str(stack.config.root)], capture_output=True, text=True, timeout=120
    )


def test_status_lists_every_service_running_with_port_and_pid(stack):
    result = _cli(stack, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    services = ("postgres", "openbao", "s3", "s3-dr", "prometheus", "pushgateway", "dagster")
    alerting = ("alertmanager", "alert-receiver", "postgres-exporter", "blackbox-exporter")
    for service in (*services, "kine", "kube-apiserver", "kube-controller-manager", *alerting):
        line = next(row for row in result.stdout.splitlines() if row.startswith(service + " "))
        assert "running" in line
        pid = stack.service(service).read_pid()
        assert str(pid) in line
        port = stack.service(service).port
        if port:
            assert str(port) in line


def test_status_json_names_every_running_service_and_validates_against_its_schema(stack):
    import jsonschema

    from cqox_platform.cli.json_schema import load_schema

    result = _cli(stack, "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    jsonschema.Draft202012Validator(load_schema("stack-status"), format_checker=jsonschema.FormatChecker()).validate(
        document
    )
    assert document["healthy"] is True and document["ha"] is None
    services = {s["name"]: s for s in document["services"]}
    for name in ("postgres", "openbao", "s3", "prometheus", "pushgateway", "dagster", "kube-apiserver"):
        assert services[name]["state"] == "running"
        assert services[name]["pid"] == stack.service(name).read_pid()


def test_up_twice_is_a_noop(stack):
    before = {s.name: s.read_pid() for s in stack.services}
    stack.up()
    assert {s.name: s.read_pid() for s in stack.services} == before


def test_postgres_accepts_only_tls13_with_scram(stack):
    info = stack.service("postgres").conninfo()
    with psycopg.connect(**info) as conn:
        (version,) = conn.execute("SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert version == "TLSv1.3"
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
        assert conn.execute("SHOW wal_level").fetchone() == ("replica",)
        assert conn.execute("SHOW archive_mode").fetchone() == ("on",)
        assert conn.execute(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = current_user"
        ).fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(**{**info, "sslmode": "disable"})
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**{**info, "ssl_max_protocol_version": "TLSv1.2"})
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**{**info, "passfile": "/dev/null", "password": "wrong"})


def test_env_is_ready_for_eval_and_holds_no_secret(stack):
    result = _cli(stack, "env")
    assert result.returncode == 0
    secrets_dir = stack.config.secrets_dir
    for secret_file in secrets_dir.iterdir():
        for secret in _secret_values(secret_file):
            assert secret not in result.stdout, f"a secret from {secret_file.name} leaked into `stack env`"
    script = f'eval "$({" ".join(CLI)} stack env --dir {stack.config.root})" && psql -XAtc "select 42"'
    shell = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert shell.stdout.strip() == "42", shell.stderr
    for var in (
        "CQOX_PG_DSN",
        "VAULT_ADDR",
        "CQOX_S3_ENDPOINT",
        "CQOX_S3_BUCKET",
        "CQOX_S3_DR_BUCKET",
        "CQOX_PROMETHEUS_URL",
        "DAGSTER_HOME",
        "PGSSLROOTCERT",
        "KUBECONFIG",
        "CQOX_KUBE_RESTRICTED_KUBECONFIG",
    ):
        assert f"export {var}=" in result.stdout


def _secret_values(path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        flat = [v for v in data.values() if isinstance(v, str)]
        flat += [item for v in data.values() if isinstance(v, list) for item in v]
        return [v for v in flat if len(v) >= 12]
    values = [line.split("=", 1)[1].strip().strip('"') for line in text.splitlines() if "=" in line]
    values += [line.rsplit(":", 1)[1] for line in text.splitlines() if line.count(":") >= 4]
    return [v for v in [*values, text.strip()] if len(v) >= 12 and "\n" not in v]


def test_secret_files_are_owner_only(stack):
    assert stack.config.secrets_dir.stat().st_mode & 0o777 == 0o700
    for path in stack.config.secrets_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_openbao_is_unsealed_and_keeps_data_across_restart(stack):
    bao = stack.service("openbao")
    token = json.loads(bao.init_file.read_text())["root_token"]
    client = hvac.Client(url=bao.url, token=token, verify=bao.ca_cert)
    assert not client.sys.is_sealed()
    if "stacktest/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("kv", path="stacktest", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret(path="probe", secret={"v": "kept"}, mount_point="stacktest")
    old_pid = bao.read_pid()
    bao.stop()
    assert not bao.running()
    stack.up()
    assert bao.read_pid() != old_pid
    assert not client.sys.is_sealed()
    read = client.secrets.kv.v2.read_secret_version(
        path="probe", mount_point="stacktest", raise_on_deleted_version=True
    )
    assert read["data"]["data"] == {"v": "kept"}


def test_s3_has_its_bucket_and_round_trips_over_verified_tls(stack):
    s3 = stack.service("s3")
    client = s3.client()
    names = {b["Name"] for b in client.list_buckets()["Buckets"]}
    assert BACKUP_BUCKET in names and DR_BUCKET not in names  # the DR bucket lives in the DR region
    client.put_object(Bucket=BACKUP_BUCKET, Key="probe/hello.txt", Body=b"hello primary")
    assert client.get_object(Bucket=BACKUP_BUCKET, Key="probe/hello.txt")["Body"].read() == b"hello primary"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(s3.url, verify=True, timeout=5)  # the system CAs do not know the stack's CA
    import boto3

    wrong = boto3.client(
        "s3",
        endpoint_url=s3.url,
        verify=s3.ca_cert,
        region_name="us-east-1",
        aws_access_key_id="nobody",
        aws_secret_access_key="wrong-secret",
        config=client_config(),
    )
    with pytest.raises(Exception, match=r"InvalidAccessKeyId|SignatureDoesNotMatch|403"):
        wrong.list_buckets()


def _client(url: str, cacert: str, key_pair: tuple[str, str]):
    import boto3

    access, secret = key_pair
    return boto3.session.Session().client(
        "s3",
        endpoint_url=url,
        verify=cacert,
        region_name="us-east-1",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=client_config(),
    )


def _s3_error(call) -> str:
    """The S3 error code a call fails with ("" when it succeeds)."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return ""


def test_the_dr_region_has_its_own_server_ca_and_keys_and_its_reader_only_reads(stack):
    from cqox_platform.archiver_clients import read_key_pair

    env = stack.env()
    primary, dr = stack.service("s3"), stack.service("s3-dr")
    assert dr.port != primary.port and dr.home != primary.home and env["CQOX_S3_DR_ENDPOINT"] == dr.url
    assert (dr.home / "data" / DR_BUCKET).is_dir() and not (primary.home / "data" / DR_BUCKET).exists()
    # Its own CA: what trusts the primary's server does not trust the DR region's, and the other way round.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(dr.url, verify=primary.ca_cert, timeout=5)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(primary.url, verify=env["CQOX_S3_DR_CACERT"], timeout=5)
    primary_key = primary.credentials()
    writer = read_key_pair(Path(env["CQOX_S3_DR_CREDENTIALS_FILE"]))
    reader = read_key_pair(Path(env["CQOX_S3_DR_READER_CREDENTIALS_FILE"]))
    assert len({primary_key[0], writer[0], reader[0]}) == 3
    for path in (env["CQOX_S3_DR_CREDENTIALS_FILE"], env["CQOX_S3_DR_READER_CREDENTIALS_FILE"]):
        assert Path(path).stat().st_mode & 0o077 == 0, path
    as_writer = _client(dr.url, dr.ca_cert, writer)
    as_reader = _client(dr.url, dr.ca_cert, reader)
    key = f"probe/{uuid.uuid4().hex}"
    as_writer.put_object(Bucket=DR_BUCKET, Key=key, Body=b"hello dr")
    # The reader reads and lists, and can change nothing: no put, delete, multipart upload or batch delete.
    assert as_reader.get_object(Bucket=DR_BUCKET, Key=key)["Body"].read() == b"hello dr"
    assert any(o["Key"] == key for o in as_reader.list_objects_v2(Bucket=DR_BUCKET, Prefix="probe/")["Contents"])
    assert as_reader.head_object(Bucket=DR_BUCKET, Key=key)["ContentLength"] == 8
    assert _s3_error(lambda: as_reader.put_object(Bucket=DR_BUCKET, Key=key, Body=b"x")) == "AccessDenied"
    assert _s3_error(lambda: as_reader.delete_object(Bucket=DR_BUCKET, Key=key)) == "AccessDenied"
    assert _s3_error(lambda: as_reader.create_multipart_upload(Bucket=DR_BUCKET, Key=key + "-mp")) == "AccessDenied"
    batch = {"Objects": [{"Key": key}]}
    assert _s3_error(lambda: as_reader.delete_objects(Bucket=DR_BUCKET, Delete=batch)) == "AccessDenied"
    assert _s3_error(lambda: as_reader.create_bucket(Bucket="cqox-reader-made")) == "AccessDenied"
    assert as_writer.get_object(Bucket=DR_BUCKET, Key=key)["Body"].read() == b"hello dr"  # untouched

    # Neither DR key is known to the primary's server, and the primary's key is not known to the DR region's. A
    # client per request: nanio leaves a refused request's body unread on the connection, so the next request on
    # it would fail with 400 whatever it is.
    def refused(url: str, cacert: str, pair: tuple[str, str], call) -> str:
        return _s3_error(lambda: call(_client(url, cacert, pair)))

    for pair in (writer, reader):
        put = refused(
            primary.url, primary.ca_cert, pair, lambda c: c.put_object(Bucket=BACKUP_BUCKET, Key=key, Body=b"x")
        )
        assert put == "InvalidAccessKeyId"
        assert refused(primary.url, primary.ca_cert, pair, lambda c: c.list_objects_v2(Bucket=BACKUP_BUCKET)) == (
            "InvalidAccessKeyId"
        )
    delete = refused(dr.url, dr.ca_cert, primary_key, lambda c: c.delete_object(Bucket=DR_BUCKET, Key=key))
    assert delete == "InvalidAccessKeyId"
    assert refused(dr.url, dr.ca_cert, primary_key, lambda c: c.list_objects_v2(Bucket=DR_BUCKET)) == (
        "InvalidAccessKeyId"
    )
    as_writer.delete_object(Bucket=DR_BUCKET, Key=key)


def test_the_primary_side_never_holds_the_dr_keys(stack):
    """PostgreSQL and its archiver (the primary side) get neither DR key: not in the archiver's settings, not in
    its Vault entry, not in their environment, and the key files are unreadable to their OS user."""
    from cqox_platform.archiver_clients import read_key_pair
    from cqox_platform.pgserver import as_pg_user

    env = stack.env()
    secrets = [
        s
        for f in ("CQOX_S3_DR_CREDENTIALS_FILE", "CQOX_S3_DR_READER_CREDENTIALS_FILE")
        for s in read_key_pair(Path(env[f]))
    ]
    archiver_settings = Path(env["CQOX_WAL_ARCHIVER_CONFIG"]).read_text()
    token = json.loads(stack.openbao.init_file.read_text())["root_token"]
    vault = hvac.Client(url=env["VAULT_ADDR"], token=token, verify=env["VAULT_CACERT"])
    archiver_entry = json.dumps(
        vault.secrets.kv.v2.read_secret_version(
            path="cqox/backups/s3", mount_point="secret", raise_on_deleted_version=True
        )["data"]["data"]
    )
    assert stack.s3.credentials()[0] in archiver_entry  # the entry read is the archiver's S3 key
    for secret in secrets:
        assert secret not in archiver_settings and secret not in archiver_entry
    pid = stack.service("postgres").read_pid()
    postmaster_env = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    assert "CQOX_S3_DR_" not in postmaster_env
    # `stack env` names the DR keys only by their files, under no AWS_* name boto3 would pick up by default.
    assert not [k for k, v in env.items() if k.startswith("AWS_") and "dr" in v.lower()]
    for path in (env["CQOX_S3_DR_CREDENTIALS_FILE"], env["CQOX_S3_DR_READER_CREDENTIALS_FILE"]):
        read = subprocess.run(as_pg_user(["cat", path]), capture_output=True, text=True, timeout=30)
        assert read.returncode != 0 and "Permission denied" in read.stderr, (path, read.stderr)


def test_alertmanager_speaks_tls13_with_basic_auth_and_keeps_silences_across_restart(stack):
    import ssl
    from datetime import timedelta

    from cqox_platform.alerts.client import AlertmanagerClient, Matcher

    am = stack.service("alertmanager")
    env = stack.env()
    assert requests.get(f"{am.url}/-/ready", verify=am.ca_cert, timeout=5).status_code == 401
    assert requests.get(f"{am.url}/-/ready", auth=("cqox", "wrong"), verify=am.ca_cert, timeout=5).status_code == 401
    tls12 = ssl.create_default_context(cafile=am.ca_cert)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", am.port), timeout=5) as sock:
        tls12.wrap_socket(sock, server_hostname="127.0.0.1").close()
    client = AlertmanagerClient(
        env["CQOX_ALERTMANAGER_URL"],
        env["CQOX_ALERTMANAGER_CACERT"],
        env["CQOX_ALERTMANAGER_USER"],
        env["CQOX_ALERTMANAGER_PASSWORD_FILE"],
    )
    silence = client.add_silence([Matcher.parse("alertname=StackTestKept")], timedelta(hours=1), "kept?", "test")
    old_pid = am.read_pid()
    am.stop()
    assert not am.running()
    stack.up()
    assert am.read_pid() != old_pid
    assert silence in {s["id"] for s in client.silences("active")}
    client.expire_silence(silence)
    # Prometheus sends its alerts there, over the same TLS and basic auth.
    prom = stack.service("prometheus").url
    deadline = time.monotonic() + 60
    while True:
        active = requests.get(f"{prom}/api/v1/alertmanagers", timeout=5).json()["data"]["activeAlertmanagers"]
        if active or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert [a["url"] for a in active] == [f"{am.url}/api/v2/alerts"]


def test_prometheus_scrapes_the_pushgateway(stack):
    gateway = stack.service("pushgateway")
    prom = stack.service("prometheus").url
    body = "cqox_stack_test_metric 42\n"
    pusher = gateway.auth("cqox-pusher")
    put = requests.put(
        f"{gateway.url}/metrics/job/stacktest", data=body, auth=pusher, verify=gateway.ca_cert, timeout=5
    )
    assert put.status_code == 200
    assert (
        "cqox_stack_test_metric"
        in requests.get(f"{gateway.url}/metrics", auth=pusher, verify=gateway.ca_cert, timeout=5).text
    )
    assert _scraped(prom, 'cqox_stack_test_metric{exported_job="stacktest"} == 42')
    config = requests.get(f"{prom}/api/v1/status/config", timeout=5).json()["data"]["yaml"]
    assert "job_name: pushgateway" in config
    flags = requests.get(f"{prom}/api/v1/status/flags", timeout=5).json()["data"]
    assert flags["web.enable-lifecycle"] == "false"
    requests.delete(f"{gateway.url}/metrics/job/stacktest", auth=pusher, verify=gateway.ca_cert, timeout=5)


def _scraped(prom: str, query: str, timeout: float = 90) -> list[dict]:
    """The result of ``query`` once it has any, waiting for a scrape of the Pushgateway."""
    deadline = time.monotonic() + timeout
    while True:
        result = requests.get(f"{prom}/api/v1/query", params={"query": query}, timeout=5).json()["data"]["result"]
        if result or time.monotonic() > deadline:
            return result
        time.sleep(1)


def test_pushed_canary_traffic_never_reaches_the_canary_queries(stack):
    """Issue 13, 11 (b): whoever can push (the pushers' password can leak) must not vote in a canary analysis."""
    from cqox_platform.canary.policy import load_policy
    from cqox_platform.package_data import package_path
    from cqox_platform.pushgateway import Pushgateway, push

    gateway = stack.service("pushgateway")
    push_url = gateway.url
    pusher = Pushgateway(push_url, "cqox-pusher", gateway.password_file("cqox-pusher"), Path(gateway.ca_cert))
    auth = {"auth": gateway.auth("cqox-pusher"), "verify": gateway.ca_cert}
    prom = stack.service("prometheus").url
    run = uuid.uuid4().hex[:12]
    fake = (
        "# TYPE http_requests_total counter\n"
        f'http_requests_total{{job="cqox-traffic",instance="forged",version="canary",code="200",run="{run}"}} 1e6\n'
    )
    # Grouped under the job the canary's selector names, as a forger would.
    group = f"{push_url}/metrics/job/cqox-traffic/run/{run}"
    assert requests.put(group, data=fake, timeout=5, **auth).status_code == 200
    # The platform's own gauges, pushed the way backups and the SLO sensor push them, in the same scrape.
    push(pusher, "cqox-backups", {"system_id": run}, [("cqox_backup_last_success_timestamp_seconds", {}, 1.0)])
    push(pusher, "cqox-slo", {"service": run}, [("slo_burn_rate", {"slo": "availability", "window": "1h"}, 2.0)])
    try:
        # Backup and SLO gauges keep the labels their alerts and readers select on.
        assert _scraped(prom, f'time() - cqox_backup_last_success_timestamp_seconds{{system_id="{run}"}} > 0')
        assert _scraped(prom, f'slo_burn_rate{{service="{run}",slo="availability",window="1h"}}')
        policy = load_policy(package_path("cqox_platform.canary", "policies") / "cqox-engine.yaml")
        for query in (
            policy.render(policy.requests_query, policy.prometheus.canary_version, "10m"),
            f'http_requests_total{{run="{run}"}}',
        ):
            series = requests.get(f"{prom}/api/v1/query", params={"query": query}, timeout=5).json()["data"]
            assert not [s for s in series["result"] if s["metric"].get("run") == run or float(s["value"][1]) >= 1e6], (
                f"a pushed series answered the canary's query {query}: {series['result']}"
            )
    finally:
        requests.delete(group, timeout=5, **auth)
        requests.delete(f"{push_url}/metrics/job/cqox-backups/system_id/{run}", timeout=5, **auth)
        requests.delete(f"{push_url}/metrics/job/cqox-slo/service/{run}", timeout=5, **auth)


def test_prometheus_admin_api_is_off(stack):
    """Issue 13, 11 (c): nobody can delete series or snapshot the TSDB through the HTTP API."""
    prom = stack.service("prometheus").url
    flags = requests.get(f"{prom}/api/v1/status/flags", timeout=5).json()["data"]
    assert flags["web.enable-admin-api"] == "false"
    # Prometheus answers a disabled admin API with errorType "unavailable" (HTTP 500 in Debian's build).
    for path, params in (
        ("/api/v1/admin/tsdb/snapshot", {}),
        ("/api/v1/admin/tsdb/clean_tombstones", {}),
        ("/api/v1/admin/tsdb/delete_series", {"match[]": "up"}),
    ):
        response = requests.post(f"{prom}{path}", params=params, timeout=5)
        assert response.status_code >= 400, f"{path} answered {response.status_code}"
        assert response.json() == {"status": "error", "errorType": "unavailable", "error": "admin APIs disabled"}
    assert requests.get(f"{prom}/api/v1/query", params={"query": "up"}, timeout=5).json()["data"]["result"]


def _gateway(stack: Stack) -> tuple[str, str | bool]:
    """The Pushgateway's URL and what verifies its certificate, as the platform's settings name them."""
    env = stack.env()
    return env["CQOX_PUSHGATEWAY_URL"], env.get("CQOX_PUSHGATEWAY_CACERT") or True


def test_the_pushgateway_refuses_pushes_without_the_pushers_credentials(stack):
    """Any local process could push ``cqox_restore_drill_success 1`` into the real backup group; now only holders
    of the pushers' password can, and what the platform pushes still arrives."""
    url, verify = _gateway(stack)
    group = f"{url}/metrics/job/cqox-backups/system_id/forged-{uuid.uuid4().hex[:8]}"
    forged = "cqox_restore_drill_success 1\n"
    for auth in (None, ("cqox-pusher", "not-the-password"), ("prometheus", "not-the-password")):
        answer = requests.put(group, data=forged, auth=auth, verify=verify, timeout=5)
        assert answer.status_code == 401, f"a push with auth {auth and auth[0]} answered {answer.status_code}"
        assert requests.delete(group, auth=auth, verify=verify, timeout=5).status_code == 401
    # The platform's pushers authenticate through the settings (paths to secrets, never the secrets).
    from cqox_platform.pushgateway import Pushgateway, delete_group, push
    from cqox_platform.settings import Settings

    settings = Settings.model_validate(
        {Settings.env_names()[k]: v for k, v in stack.env().items() if k.startswith("CQOX_")}
    )
    gateway = Pushgateway.from_settings(settings)
    assert gateway is not None and gateway.password_file is not None
    password = gateway.password_file.read_text().strip()
    assert password not in json.dumps(stack.env()) and password not in repr(gateway)
    run = uuid.uuid4().hex[:8]
    assert push(gateway, "cqox-backups", {"system_id": run}, [("cqox_backup_last_success_timestamp_seconds", {}, 1.0)])
    prom = stack.service("prometheus").url
    assert _scraped(prom, f'cqox_backup_last_success_timestamp_seconds{{system_id="{run}"}}')
    delete_group(gateway, "cqox-backups", {"system_id": run})


def test_an_awkward_label_value_reaches_the_pushgateway_and_prometheus_intact(stack):
    """A label value with a newline, a backslash and quotes, and a grouping value with a slash, pushed the way the
    platform pushes (TLS against the stack's CA, the pushers' credentials from the settings), read back unchanged
    from the Pushgateway's API and from Prometheus' scrape of it; deleting the group removes it."""
    from cqox_platform.pushgateway import Pushgateway, delete_group, push
    from cqox_platform.settings import Settings

    settings = Settings.model_validate(
        {Settings.env_names()[k]: v for k, v in stack.env().items() if k.startswith("CQOX_")}
    )
    gateway = Pushgateway.from_settings(settings)
    assert gateway is not None and gateway.cacert is not None and gateway.url.startswith("https://")
    run = uuid.uuid4().hex[:8]
    awkward = f'first line\nsecond line \\ C:\\wal "quoted" {run}'
    grouping = {"service": f"svc/{run} with space"}
    assert push(gateway, "cqox-label-test", grouping, [("cqox_stack_label_test", {"detail": awkward}, 7.0)]) == 1
    url, verify = _gateway(stack)
    auth = stack.service("pushgateway").auth("cqox-pusher")
    try:
        groups = requests.get(f"{url}/api/v1/metrics", auth=auth, verify=verify, timeout=5).json()["data"]
        (group,) = [g for g in groups if g["labels"].get("service") == grouping["service"]]
        assert group["labels"] == {"job": "cqox-label-test", **grouping}
        (stored,) = group["cqox_stack_label_test"]["metrics"]
        assert stored["labels"]["detail"] == awkward and float(stored["value"]) == 7.0
        prom = stack.service("prometheus").url
        (scraped,) = _scraped(
            prom, f'cqox_stack_label_test{{exported_job="cqox-label-test",service="{grouping["service"]}"}}'
        )
        assert scraped["metric"]["detail"] == awkward and float(scraped["value"][1]) == 7.0
    finally:
        delete_group(gateway, "cqox-label-test", grouping)
    groups = requests.get(f"{url}/api/v1/metrics", auth=auth, verify=verify, timeout=5).json()["data"]
    assert not [g for g in groups if g["labels"].get("service") == grouping["service"]]


def test_prometheus_refuses_to_quit_over_http_and_reloads_rules_by_signal(stack):
    """``POST /-/quit`` would stop all alerting; the lifecycle API is off, and rule files still load (SIGHUP)."""
    prometheus = stack.service("prometheus")
    answer = requests.post(f"{prometheus.url}/-/quit", timeout=10)
    assert answer.status_code == 403, f"POST /-/quit answered {answer.status_code}: {answer.text[:200]}"
    assert requests.post(f"{prometheus.url}/-/reload", timeout=10).status_code == 403
    time.sleep(1)
    assert prometheus.running() and prometheus.healthy()
    import yaml

    from cqox_platform.metrics.prometheus import PrometheusClient, PrometheusError

    env = stack.env()
    client = PrometheusClient(
        env["CQOX_PROMETHEUS_URL"], env["CQOX_PROMETHEUS_RULES_DIR"], pid_file=env.get("CQOX_PROMETHEUS_PID_FILE")
    )
    group = f"reload-by-signal-{uuid.uuid4().hex[:8]}"
    rules = {"groups": [{"name": group, "rules": [{"record": "cqox:reload_test", "expr": "vector(1)"}]}]}
    broken = {"groups": [{"name": f"{group}-broken", "rules": [{"record": "cqox:broken", "expr": "vector("}]}]}
    try:
        assert group in client.install_rules(f"{group}.yml", yaml.safe_dump(rules))
        # A rule file Prometheus refuses is reported, and the rules it had stay loaded.
        with pytest.raises(PrometheusError, match="refused to reload after SIGHUP"):
            client.install_rules(f"{group}-broken.yml", yaml.safe_dump(broken))
        assert group in client.rule_groups()
    finally:
        for name in (f"{group}.yml", f"{group}-broken.yml"):
            (stack.service("prometheus").rules_dir / name).unlink(missing_ok=True)
        client.reload()
    assert group not in client.rule_groups() and prometheus.healthy()


# --- bad input ------------------------------------------------------------------------------------------------


def _fresh_config(**kwargs) -> StackConfig:
    root = make_world_traversable_tmpdir("cqox-test-bad-")
    return StackConfig(root=root, ports=distinct_free_ports(list(DEFAULT_PORTS)), with_dagster=False, **kwargs)


def test_missing_binary_names_the_package_and_starts_nothing(monkeypatch):
    config = _fresh_config()
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingBinaryError, match=r"prometheus.*apt-get install prometheus"):
        Stack(config).up()
    assert not (config.run_dir).exists() or not any(config.run_dir.iterdir())
    assert not (config.root / "postgres" / "data" / "PG_VERSION").exists()


def test_missing_kube_build_says_to_run_the_build_script(monkeypatch, tmp_path):
    config = _fresh_config()
    monkeypatch.setenv("CQOX_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no kine or kube-apiserver of another origin
    with pytest.raises(MissingBinaryError, match=r"`kine`.*empty-cache.*run scripts/build-kube\.sh"):
        Stack(config).up()
    assert not (config.root / "postgres" / "data" / "PG_VERSION").exists()


def test_port_in_use_names_the_port_and_the_process():
    config = _fresh_config()
    port = free_port()
    config.ports["pushgateway"] = port
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        with pytest.raises(PortInUseError) as excinfo:
            Stack(config).up()
    finally:
        holder.close()
    message = str(excinfo.value)
    assert f"127.0.0.1:{port}" in message
    assert "pushgateway" in message
    assert f"(pid {os.getpid()})" in message  # the process holding it: this test


@pytest.mark.parametrize("problem", ["read-only", "full"])
def test_unusable_stack_dir_fails_clearly(problem):
    root = make_world_traversable_tmpdir("cqox-test-fs-")
    options = "ro,size=1m" if problem == "read-only" else "size=8k"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(root)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        if problem == "full":
            _fill(root)
        config = StackConfig(root=root / "stack" if problem == "full" else root, with_dagster=False)
        with pytest.raises(StackDirError, match="read-only" if problem == "read-only" else "disk is full"):
            Stack(config).up()
    finally:
        subprocess.run(["umount", str(root)], check=False)


def _fill(root) -> None:
    try:
        with open(root / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 1024)
                handle.flush()
    except OSError:
        pass
