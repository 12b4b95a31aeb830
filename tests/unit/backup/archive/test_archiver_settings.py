"""The archiver settings file carries the data-key cache window; an old file without it gets the defaults, a bad
value is refused naming the field and the file."""

from __future__ import annotations

import json

import pytest

from cqox_platform.backup.archive.archiver_settings import ArchiverConfigError, ArchiverSettings
from cqox_platform.crypto.key_cache import KeyCachePolicy

BASE = {
    "vault_addr": "https://127.0.0.1:8200",
    "vault_cacert": "/ca.pem",
    "role_id": "r",
    "secret_id": "s",
    "s3_endpoint": "https://127.0.0.1:9000",
    "s3_cacert": "/ca.pem",
    "bucket": "b",
}


def test_a_file_written_before_the_cache_existed_gets_the_default_window(tmp_path):
    path = tmp_path / "archiver.json"
    path.write_text(json.dumps(BASE))
    settings = ArchiverSettings.load(path)
    assert settings.key_cache == KeyCachePolicy(max_age=900.0, max_uses=4096)
    assert json.loads(settings.to_json())["data_key_max_age_seconds"] == 900.0


def test_the_window_is_read_and_zero_turns_the_cache_off(tmp_path):
    path = tmp_path / "archiver.json"
    path.write_text(json.dumps({**BASE, "data_key_max_age_seconds": 0, "data_key_max_uses": 4096}))
    assert ArchiverSettings.load(path).key_cache.enabled is False


@pytest.mark.parametrize(
    ("field", "value"),
    [("data_key_max_age_seconds", -5), ("data_key_max_age_seconds", "15m"), ("data_key_max_uses", 0)],
)
def test_a_bad_window_is_refused_naming_the_field_and_the_file(tmp_path, field, value):
    path = tmp_path / "archiver.json"
    path.write_text(json.dumps({**BASE, field: value}))
    with pytest.raises(ArchiverConfigError, match=rf"{path}.*{field}"):
        ArchiverSettings.load(path)
