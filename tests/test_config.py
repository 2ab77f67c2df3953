from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT
from scheduler.config import Config, client_socket, daemon_paths, load_config, parse_config
from scheduler.errors import ConfigError


def test_documented_config_equals_the_built_in_defaults() -> None:
    documented = load_config(ROOT / "config.toml")
    assert documented == Config(source=str(ROOT / "config.toml"))


@pytest.mark.parametrize(("text", "needle"), [
    ("[daemon]\ntick = 1\n", "daemon.tick: unknown key"),
    ("[planner]\nslot_minutes = 'x'\n", "planner.slot_minutes: must be int"),
    ("[planner]\nobjective = 'cheap'\n", "planner.objective"),
    ("daemon = 3\n", "daemon: must be a table"),
    ("default_max_delay = 'soon'\n", "default_max_delay"),
    ("[daemon\n", "line 1"),
    ("[executor]\nkind = 'pbs'\n", "executor.kind: must be 'local' or 'slurm'"),
    ("[executor]\nkind = 'slurm'\nshared_dir = '/s'\n", "executor.partition: must name"),
    ("[executor]\nkind = 'slurm'\npartition = 'gpu'\nshared_dir = 'rel'\n", "executor.shared_dir: must be an absolute"),
    ("[executor]\nkind = 'slurm'\npartition = 'gpu'\nshared_dir = '/s'\n[daemon]\nclock_speed = 60.0\n",
     "daemon.clock_speed: must be 1.0 with executor.kind"),
])
def test_bad_config_names_the_key(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        parse_config(text, "test.toml")


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")


def test_paths_follow_gsched_home_then_systemd_then_user() -> None:
    config = Config()
    assert daemon_paths(config, {"GSCHED_HOME": "/x"}, euid=1000).socket == Path("/x/gsched.sock")
    systemd = daemon_paths(config, {"STATE_DIRECTORY": "/var/lib/gsched", "RUNTIME_DIRECTORY": "/run/gsched"}, euid=0)
    assert systemd.home == Path("/var/lib/gsched") and systemd.socket == Path("/run/gsched/gsched.sock")
    user = daemon_paths(config, {"HOME": "/home/ann"}, euid=1000)
    assert user.home == Path("/home/ann/.local/state/gsched") and user.db.name == "gsched.db"
    assert client_socket(config, {"GSCHED_SOCKET": "/s.sock"}, euid=1000) == Path("/s.sock")


def test_readme_provider_example_parses_and_covers_every_kind() -> None:
    from scheduler.config import PROVIDER_KINDS

    text = (ROOT / "docs" / "forecasts.md").read_text()
    block = text[text.index("[forecast]\ncurrency"):]
    config = parse_config(block[: block.index("```")], "docs/forecasts.md")
    assert sorted(p.kind for p in config.forecast.providers) == sorted(PROVIDER_KINDS)
