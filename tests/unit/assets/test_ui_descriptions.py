"""What the Dagster UI shows about each definition: a description everywhere a person looks, in their words.

A check or schedule without a description is a bare name on its page; a description citing the project's
tracker ("issue 16", "item 6") means nothing to an operator.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

INTERNAL_REFERENCE = re.compile(r"\b(issue|item)s?\s*#?\d+", re.IGNORECASE)


@pytest.fixture(scope="module")
def repo():
    from cqox_platform.definitions import defs

    return defs.get_repository_def()


def _described(repo) -> Iterator[tuple[str, str | None]]:
    """(what, description) of every asset, check, schedule, sensor and job the code location defines."""
    graph = repo.asset_graph
    for key in sorted(graph.get_all_asset_keys(), key=str):
        yield f"asset {key.to_user_string()}", graph.get(key).description
    for key in sorted(graph.asset_check_keys, key=str):
        yield f"check {key.asset_key.to_user_string()}:{key.name}", graph.get_check_spec(key).description
    for schedule in repo.schedule_defs:
        yield f"schedule {schedule.name}", schedule.description
    for sensor in repo.sensor_defs:
        yield f"sensor {sensor.name}", sensor.description
    for job in repo.get_all_jobs():
        if not job.name.startswith("__"):  # Dagster's implicit asset jobs
            yield f"job {job.name}", job.description


def test_every_check_and_schedule_has_a_description(repo) -> None:
    graph = repo.asset_graph
    missing = [
        f"check {key.asset_key.to_user_string()}:{key.name}"
        for key in sorted(graph.asset_check_keys, key=str)
        if not graph.get_check_spec(key).description
    ]
    missing += [f"schedule {s.name}" for s in repo.schedule_defs if not s.description]
    assert not missing, "no description (the UI shows a bare name):\n" + "\n".join(missing)


def test_every_asset_sensor_and_job_has_a_description(repo) -> None:
    missing = [what for what, text in _described(repo) if not text]
    assert not missing, "no description:\n" + "\n".join(missing)


def test_no_description_cites_the_projects_tracker(repo) -> None:
    cited = [f"{what}: {text}" for what, text in _described(repo) if text and INTERNAL_REFERENCE.search(text)]
    assert not cited, "internal references in what the UI shows:\n" + "\n".join(cited)
