"""Job groups: what tells a group's jobs apart."""

from __future__ import annotations

from ci_server.models import Job


def test_a_job_s_label_names_its_python_version_and_shard() -> None:
    assert Job(id="a", python="3.13", shard_index=2, shard_count=4).label == "py3.13 2/4"
    assert Job(id="a", python="3.11").label == "py3.11"
    assert Job(id="a", shard_index=1, shard_count=2).label == "1/2"


def test_a_lone_job_has_no_label() -> None:
    assert Job(id="a").label == ""
