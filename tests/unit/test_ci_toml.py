"""ci.toml: what a project may say about how it is tested, and what it may not."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci_server.runner.config import ConfigError, ProjectConfig, load_config


def config_of(tmp_path: Path, text: str) -> ProjectConfig:
    (tmp_path / "ci.toml").write_text(text)
    return load_config(tmp_path)


def test_system_packages_are_kept_sorted_once_each(tmp_path: Path) -> None:
    """In any order, with repeats: the same packages make the same image."""
    config = config_of(tmp_path, 'system_packages = ["libyaml-dev", "g++", "libpq-dev", "g++"]')
    assert config.system_packages == ("g++", "libpq-dev", "libyaml-dev")


def test_without_system_packages_there_are_none(tmp_path: Path) -> None:
    assert config_of(tmp_path, 'pytest_args = ["-x"]').system_packages == ()


@pytest.mark.parametrize(
    "name",
    [
        "libyaml-dev; touch /pwned",  # a second command
        "$(touch /pwned)",
        "-oAPT::Update::Pre-Invoke::=touch",  # an option of apt, not a package
        "LibYAML-dev",  # Debian names are lowercase
        "x",  # at least two characters
        "libyaml-dev=0.2.5-1",  # names only, no versions
        "libyaml-dev libpq-dev",
        "",
    ],
)
def test_a_system_package_that_is_no_debian_package_name_is_refused(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(ConfigError, match="is not a Debian package name") as raised:
        config_of(tmp_path, f"system_packages = [{name!r}]")
    assert repr(name) in str(raised.value)


def test_system_packages_must_be_a_list_of_strings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        config_of(tmp_path, 'system_packages = "libpq-dev"')
    assert str(raised.value) == "ci.toml: system_packages must be an array of strings, not a string"


def test_the_project_may_name_itself(tmp_path: Path) -> None:
    assert config_of(tmp_path, 'project = "shop"').project == "shop"
    assert config_of(tmp_path, 'pytest_args = ["-x"]').project is None
    with pytest.raises(ConfigError, match=r"ci\.toml: project must be a string, not an integer"):
        config_of(tmp_path, "project = 3")


def test_the_project_may_ask_for_python_versions_and_shards(tmp_path: Path) -> None:
    config = config_of(tmp_path, 'python = ["3.11", "3.13"]\nshards = 4')
    assert (config.python, config.shards) == (("3.11", "3.13"), 4)
    assert (ProjectConfig().python, ProjectConfig().shards) == ((), None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('python = "3.13"', "ci.toml: python must be an array of strings, not a string"),
        ("python = [3.13]", "ci.toml: python must be an array of strings, not an array holding"),
        ('shards = "4"', "ci.toml: shards must be an integer, not a string"),
        ("shards = true", "ci.toml: shards must be an integer, not a boolean"),
        ("shards = 0", "ci.toml: `shards` must be 1 or more, not 0"),
    ],
)
def test_wrong_python_versions_or_shards_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        config_of(tmp_path, text)
    assert str(raised.value).startswith(message)


def test_artifacts_are_patterns_kept_once_each_in_order(tmp_path: Path) -> None:
    config = config_of(tmp_path, 'artifacts = ["htmlcov/**", "reports/*.xml", "htmlcov/**"]')
    assert config.artifacts == ("htmlcov/**", "reports/*.xml")
    assert config_of(tmp_path, "").artifacts == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('artifacts = ["/etc/passwd"]', "'/etc/passwd' is not relative to the project"),
        ('artifacts = ["../up/*"]', "'../up/*' goes out of the project (`..`)"),
        ('artifacts = ["a/../../b"]', "goes out of the project"),
        ('artifacts = [""]', "'' is empty"),
        ('artifacts = ["a\\\\b"]', "has a backslash or a control character"),
        ('artifacts = ["a\\nb"]', "has a backslash or a control character"),
        ('artifacts = "htmlcov/**"', "artifacts"),  # a string, not a list
        ("artifacts = [1]", "artifacts"),
        (f"artifacts = {['x'] * 101}", "at most 100 patterns"),
    ],
)
def test_an_unusable_artifacts_pattern_is_refused(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=r"ci\.toml") as refused:
        config_of(tmp_path, text)
    assert says in str(refused.value)
