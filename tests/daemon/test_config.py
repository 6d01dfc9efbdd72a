"""Config: defaults without a file, TOML, ENIGMA_* variables, flags — and errors that name key and source."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.defaults import DEFAULT_EVENTS, DEFAULT_RPC
from daemon.config import ConfigError, load_config


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "XDG_DATA_HOME": str(tmp_path / "share"),
    }


def write_config(env: dict[str, str], text: str) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "enigma" / "enigmad.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_no_file_gives_loopback_endpoints_and_xdg_data_dir(env: dict[str, str]) -> None:
    cfg = load_config(env=env)
    assert (cfg.daemon.rpc, cfg.daemon.events) == (DEFAULT_RPC, DEFAULT_EVENTS)
    assert cfg.data_dir == Path(env["XDG_DATA_HOME"]) / "enigma"
    assert cfg.path is None
    assert cfg.key_file == cfg.data_dir / "server.key"


def test_data_dir_falls_back_to_home_local_share(env: dict[str, str]) -> None:
    del env["XDG_DATA_HOME"]
    assert load_config(env=env).data_dir == Path(env["HOME"]) / ".local" / "share" / "enigma"


def test_xdg_config_file_is_read(env: dict[str, str]) -> None:
    path = write_config(env, '[daemon]\nrpc = "tcp://127.0.0.1:9000"\n[modules]\nautoload = ["echo"]\n')
    cfg = load_config(env=env)
    assert cfg.daemon.rpc == "tcp://127.0.0.1:9000"
    assert cfg.modules.autoload == ["echo"]
    assert cfg.path == path.resolve()


def test_unknown_key_error_names_key_and_file(env: dict[str, str]) -> None:
    path = write_config(env, "[daemon]\nrcp = 'tcp://127.0.0.1:1'\n")
    with pytest.raises(ConfigError, match=r"unknown key 'daemon\.rcp' in .*enigmad\.toml") as exc:
        load_config(env=env)
    assert str(path.resolve()) in str(exc.value)


def test_unknown_section_error_names_file(env: dict[str, str]) -> None:
    path = write_config(env, "[deamon]\nrpc = 'tcp://127.0.0.1:1'\n")
    with pytest.raises(ConfigError, match="unknown section or key 'deamon'") as exc:
        load_config(env=env)
    assert str(path.resolve()) in str(exc.value)


def test_wrong_type_error_names_key_type_and_file(env: dict[str, str]) -> None:
    path = write_config(env, "[daemon]\nshutdown_timeout = 'soon'\n")
    with pytest.raises(
        ConfigError, match=r"daemon\.shutdown_timeout: expected a number, got the string 'soon' in"
    ) as e:
        load_config(env=env)
    assert str(path.resolve()) in str(e.value)


def test_bad_endpoint_error_names_key_and_file(env: dict[str, str]) -> None:
    write_config(env, "[daemon]\nevents = 'http://127.0.0.1:80'\n")
    with pytest.raises(ConfigError, match=r"daemon\.events: 'http://127\.0\.0\.1:80' is not a ZeroMQ endpoint .* in /"):
        load_config(env=env)


def test_port_out_of_range_is_a_bad_endpoint(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"daemon\.rpc: .* from --rpc"):
        load_config(env=env, overrides={"daemon.rpc": "tcp://127.0.0.1:70000"})


def test_invalid_toml_error_names_file(env: dict[str, str]) -> None:
    path = write_config(env, "[daemon\n")
    with pytest.raises(ConfigError, match="not valid TOML") as exc:
        load_config(env=env)
    assert str(path) in str(exc.value)


def test_explicit_config_file_must_exist(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml does not exist"):
        load_config(tmp_path / "nope.toml", env=env)


def test_enigma_config_variable_selects_the_file(env: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text("[daemon]\nlog_level = 'debug'\n")
    env["ENIGMA_CONFIG"] = str(other)
    assert load_config(env=env).daemon.log_level == "debug"


def test_env_alias_overrides_file(env: dict[str, str]) -> None:
    write_config(env, "[daemon]\nrpc = 'tcp://127.0.0.1:9000'\n")
    env["ENIGMA_RPC"] = "tcp://127.0.0.1:9100"
    cfg = load_config(env=env)
    assert cfg.daemon.rpc == "tcp://127.0.0.1:9100"
    assert cfg.origin("daemon.rpc") == "from $ENIGMA_RPC"


def test_env_nested_keys_are_converted_to_the_schema_type(env: dict[str, str]) -> None:
    env |= {"ENIGMA_DAEMON__SHUTDOWN_TIMEOUT": "3", "ENIGMA_SECURITY__CURVE": "yes", "ENIGMA_MODULES__AUTOLOAD": "a,b"}
    cfg = load_config(env=env)
    assert cfg.daemon.shutdown_timeout == 3.0
    assert cfg.security.curve is True
    assert cfg.modules.autoload == ["a", "b"]


def test_env_module_section_values_take_toml_types(env: dict[str, str]) -> None:
    write_config(env, "[modules.llm]\nmodel = 'x.gguf'\ncontext = 512\n")
    env |= {"ENIGMA_MODULES__LLM__THREADS": "4", "ENIGMA_MODULES__LLM__MODEL": "/m/y.gguf"}
    assert load_config(env=env).section("modules.llm") == {"model": "/m/y.gguf", "context": 512, "threads": 4}


def test_env_wrong_type_error_names_the_variable(env: dict[str, str]) -> None:
    env["ENIGMA_SECURITY__CURVE"] = "maybe"
    with pytest.raises(ConfigError, match=r"security\.curve: expected a boolean, got the string 'maybe' from "):
        load_config(env=env)


def test_env_unknown_nested_key_is_an_error(env: dict[str, str]) -> None:
    env["ENIGMA_DAEMON__PORT"] = "1"
    with pytest.raises(ConfigError, match=r"unknown key 'daemon\.port' from \$ENIGMA_DAEMON__PORT"):
        load_config(env=env)


def test_env_variables_that_are_not_config_keys_are_ignored(env: dict[str, str]) -> None:
    env["ENIGMA_TIMEOUT"] = "3"
    assert load_config(env=env).daemon.rpc == DEFAULT_RPC


def test_flags_override_env(env: dict[str, str]) -> None:
    env["ENIGMA_LOG_LEVEL"] = "debug"
    cfg = load_config(env=env, overrides={"daemon.log_level": "error", "daemon.rpc": None})
    assert cfg.daemon.log_level == "error"
    assert cfg.origin("daemon.log_level") == "from --log-level"


def test_bad_log_level_per_area_names_key(env: dict[str, str]) -> None:
    write_config(env, "[daemon.log_levels]\nhub = 'loud'\n")
    with pytest.raises(ConfigError, match=r"daemon\.log_levels\.hub: 'loud' is not a log level"):
        load_config(env=env)


def test_bad_node_id_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"daemon\.node_id: 'a/b' must be"):
        load_config(env=env, overrides={"daemon.node_id": "a/b"})


def test_autoload_of_unknown_module_names_it_and_the_file(env: dict[str, str]) -> None:
    path = write_config(env, "[modules]\nautoload = ['echo', 'ehco']\n")
    cfg = load_config(env=env)
    with pytest.raises(ConfigError, match=r"modules\.autoload: unknown module 'ehco' in .* \(known: echo, system\)"):
        cfg.check_modules({"echo": "", "system": ""})
    assert cfg.origin("modules.autoload") == f"in {path.resolve()}"


def test_modules_scalar_key_other_than_autoload_is_refused(env: dict[str, str]) -> None:
    write_config(env, "[modules]\nllm = 'on'\n")
    with pytest.raises(ConfigError, match=r"unknown key 'modules\.llm' in "):
        load_config(env=env)


def test_section_of_unconfigured_module_is_empty(env: dict[str, str]) -> None:
    assert load_config(env=env).section("modules.echo") == {}


def test_the_example_config_is_valid(env: dict[str, str]) -> None:
    example = Path(__file__).resolve().parents[2] / "daemon" / "enigmad.example.toml"
    cfg = load_config(example, env=env)
    cfg.check_modules({"system": ""})
    assert cfg.section("modules.system") == {"interval": 10.0}
    assert (cfg.daemon.rpc, cfg.security.curve) == (DEFAULT_RPC, False)


def test_negative_slow_callback_threshold_is_refused(env: dict[str, str]) -> None:
    env["ENIGMA_DAEMON__SLOW_CALLBACK"] = "-1"
    with pytest.raises(
        ConfigError, match=r"daemon\.slow_callback: must be 0 \(off\) or more from \$ENIGMA_DAEMON__SLOW"
    ):
        load_config(env=env)


def test_with_no_setting_the_default_model_modules_autoload(env: dict[str, str]) -> None:
    cfg = load_config(env=env)
    assert cfg.autoload_for({"llm": 1, "chat": 1, "echo": 1}) == ["llm", "chat"]
    # A registry without them (a trimmed build) simply loads less, and that is not a config error.
    assert cfg.autoload_for({"echo": 1}) == []
    cfg.check_modules({"echo": 1})


def test_default_autoload_env_replaces_only_the_builtin_default(env: dict[str, str]) -> None:
    assert load_config(env={**env, "ENIGMA_DEFAULT_AUTOLOAD": "echo"}).autoload_for({"echo": 1}) == ["echo"]
    path = write_config(env, "[modules]\nautoload = ['system']\n")
    cfg = load_config(path, env={**env, "ENIGMA_DEFAULT_AUTOLOAD": "echo"})
    assert cfg.autoload_for({"echo": 1, "system": 1}) == ["system"]
