"""state.yaml: both shapes, env expansion, adapter names, defaults, one clear error per mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from state_tasks.adapters.kv_store import KvStore
from state_tasks.adapters.records import (
    OP_WINDOW_MARGIN_S,
    default_op_window_s,
)
from state_tasks.config import (
    load_config,
    parse_config,
)
from state_tasks.core.environment import (
    DEFAULT_VISIBILITY_TIMEOUT_S,
    visibility_timeout_s,
)
from state_tasks.core.errors import ConfigError

ENGINE_SAMPLE = """
modules:
  - class: modules::state::StateModule
    config:
      adapter:
        class: modules::state::adapters::KvStore
        config:
          store_method: file_based
          file_path: ./data/state_store
          save_interval_ms: 5000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "state.yaml"
    path.write_text(text)
    return path


def test_engine_sample_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ENGINE_SAMPLE))
    assert config.adapter_name == "KvStore"
    assert config.adapter_settings["store_method"] == "file_based"
    assert config.adapter_settings["save_interval_ms"] == 5000
    assert config.process_local


def test_bare_module_list_is_accepted(tmp_path: Path) -> None:
    text = "- class: modules::state::StateModule\n  config:\n    adapter:\n      class: redis\n"
    config = load_config(write(tmp_path, text))
    assert config.adapter_name == "RedisAdapter"
    assert not config.process_local


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("modules::state::adapters::KvStore", "KvStore"),
        ("kv", "KvStore"),
        ("modules::state::adapters::RedisAdapter", "RedisAdapter"),
        ("redis", "RedisAdapter"),
        ("state_tasks.adapters.kv_store.KvStore", "KvStore"),
        ("state_tasks.adapters.kv_store:KvStore", "KvStore"),
    ],
)
def test_adapter_naming_styles(name: str, expected: str) -> None:
    document = [{"class": "modules::state::StateModule", "config": {"adapter": {"class": name}}}]
    assert parse_config(document, "x.yaml").adapter_name == expected


def test_dotted_path_builds_the_users_class() -> None:
    document = [
        {
            "class": "modules::state::StateModule",
            "config": {
                "adapter": {
                    "class": "state_tasks.adapters.kv_store.KvStore",
                    "config": {"max_value_bytes": 10},
                }
            },
        }
    ]
    adapter = parse_config(document, "x.yaml").build_adapter()
    assert isinstance(adapter, KvStore)
    assert adapter.max_value_bytes == 10


def test_defaults_no_adapter_means_in_memory_kvstore() -> None:
    config = parse_config({"modules": [{"class": "modules::state::StateModule"}]}, "x.yaml")
    assert config.adapter_name == "KvStore"
    assert config.adapter_settings["store_method"] == "in_memory"
    assert isinstance(config.build_adapter(), KvStore)


def test_no_file_means_builtin_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STATE_CONFIG", raising=False)
    config = load_config()
    assert (config.adapter_name, config.source) == ("KvStore", "built-in defaults")


def test_state_config_variable_points_at_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path, "- class: modules::state::StateModule\n  config: {adapter: {class: redis}}\n"
    )
    monkeypatch.setenv("STATE_CONFIG", str(path))
    assert load_config().adapter_name == "RedisAdapter"


def test_env_expansion_with_and_without_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_REDIS", "redis://example:1/3")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    document = {
        "modules": [
            {
                "class": "modules::state::StateModule",
                "config": {
                    "adapter": {
                        "class": "redis",
                        "config": {
                            "redis_url": "${MY_REDIS}",
                            "key_prefix": "${NOT_SET_ANYWHERE:p}-x",
                        },
                    }
                },
            }
        ]
    }
    settings = parse_config(document, "x.yaml").adapter_settings
    assert settings["redis_url"] == "redis://example:1/3"
    assert settings["key_prefix"] == "p-x"


def test_env_default_may_hold_colons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL_FOR_TEST", raising=False)
    document = [
        {
            "class": "modules::state::StateModule",
            "config": {
                "adapter": {
                    "class": "redis",
                    "config": {"redis_url": "${REDIS_URL_FOR_TEST:redis://localhost:6379}"},
                }
            },
        }
    ]
    assert (
        parse_config(document, "x.yaml").adapter_settings["redis_url"] == "redis://localhost:6379"
    )


def test_env_expanded_numbers_are_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAVE_MS", "250")
    config = load_config(write(tmp_path, ENGINE_SAMPLE.replace("5000", "${SAVE_MS}")))
    assert config.adapter_settings["save_interval_ms"] == 250


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            ENGINE_SAMPLE.replace(
                "modules::state::adapters::KvStore", "modules::state::adapters::Nope"
            ),
            r"modules\[0\]\.config\.adapter\.class: cannot import adapter class 'modules::state::adapters::Nope'",
        ),
        (
            ENGINE_SAMPLE.replace("KvStore", "KvStore").replace(
                "class: modules::state::adapters::KvStore", "class: mystery"
            ),
            r"modules\[0\]\.config\.adapter\.class: unknown adapter class 'mystery'",
        ),
        (
            ENGINE_SAMPLE.replace("file_based", "on_paper"),
            r"modules\[0\]\.config\.adapter\.config\.store_method: .*'in_memory' or 'file_based'.*on_paper",
        ),
        (
            ENGINE_SAMPLE.replace("5000", "soon"),
            r"modules\[0\]\.config\.adapter\.config\.save_interval_ms: .*integer.*'soon'",
        ),
        (
            ENGINE_SAMPLE.replace("5000", "0"),
            r"modules\[0\]\.config\.adapter\.config\.save_interval_ms: .*greater than 0",
        ),
        (
            ENGINE_SAMPLE.replace("save_interval_ms", "save_intervall_ms"),
            r"config\.save_intervall_ms: unknown field for KvStore",
        ),
        (
            ENGINE_SAMPLE.replace("./data/state_store", "${STATE_DIR_NOT_SET}"),
            r"modules\[0\]\.config\.adapter\.config\.file_path: environment variable STATE_DIR_NOT_SET is not set",
        ),
        ("modules: {a: 1}", r"modules: expected a list of modules"),
        (
            "modules:\n  - class: modules::other::Thing\n",
            r"no module with class modules::state::StateModule",
        ),
        ("modules: [\n", r"not valid YAML"),
        ("modulez: []", r"unknown top-level keys \['modulez'\]"),
        (
            "- class: modules::state::StateModule\n  config: {adapter: {class: state_tasks.adapters.base.DEFAULT_MAX_VALUE_BYTES}}",
            r"is not a subclass of state_tasks.adapters.base.StateAdapter",
        ),
        (
            "- class: modules::state::StateModule\n  config: {adapter: {class: redis, config: {redis_url: 5}}}",
            r"config\.redis_url: .*string",
        ),
    ],
)
def test_bad_files_fail_with_one_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.delenv("STATE_DIR_NOT_SET", raising=False)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert info.value.code == "CONFIG_ERROR"
    assert info.value.message.startswith(str(path))


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")


def _adapter(config: dict[str, object], name: str = "kv") -> object:
    document = [
        {
            "class": "modules::state::StateModule",
            "config": {"adapter": {"class": name, "config": config}},
        }
    ]
    return parse_config(document, "x.yaml").build_adapter()


def test_the_op_window_follows_the_brokers_visibility_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CELERY_VISIBILITY_TIMEOUT", raising=False)
    assert default_op_window_s() == DEFAULT_VISIBILITY_TIMEOUT_S + OP_WINDOW_MARGIN_S
    monkeypatch.setenv("CELERY_VISIBILITY_TIMEOUT", "600")
    expected = 600 + OP_WINDOW_MARGIN_S
    assert default_op_window_s() == expected
    for name in ("kv", "redis"):
        assert _adapter({}, name).op_window_s == expected  # type: ignore[attr-defined]
    assert KvStore().op_window_s == expected  # built without a config, too


def test_op_window_and_max_ops_reach_the_adapter(tmp_path: Path) -> None:
    memory = _adapter({"op_window_s": 90, "max_ops": 7})
    assert (memory.op_window_s, memory.max_ops) == (90, 7)  # type: ignore[attr-defined]
    stored = _adapter(
        {"store_method": "file_based", "file_path": str(tmp_path), "op_window_s": 30.5}
    )
    assert stored.op_window_s == 30.5  # type: ignore[attr-defined]
    assert _adapter({"op_window_s": 5}, "redis").op_window_s == 5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"op_window_s": 0}, r"config\.op_window_s: Input should be greater than 0"),
        ({"max_ops": -1}, r"config\.max_ops: Input should be greater than 0"),
    ],
)
def test_bad_op_window_or_max_ops_is_refused(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _adapter(config)


@pytest.mark.parametrize("raw", ["soon", "0", "-5", "1.5"])
def test_a_bad_visibility_timeout_is_named(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("CELERY_VISIBILITY_TIMEOUT", raw)
    with pytest.raises(ConfigError, match=rf"CELERY_VISIBILITY_TIMEOUT .*got '{raw}'"):
        visibility_timeout_s()


@pytest.mark.parametrize(
    "variable",
    ["CELERY_WORKER_CONCURRENCY", "CELERY_RESULT_EXPIRES", "STATE_TASKS_CLEANUP_INTERVAL"],
)
def test_a_bad_number_in_the_celery_settings_environment_is_named(
    variable: str, tmp_path: Path
) -> None:
    # The package's Celery settings are read when the app is configured, in any process
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "STATE_"))}
    done = subprocess.run(
        [sys.executable, "-c", "from state_tasks import app; app.conf.worker_concurrency"],
        cwd=tmp_path,
        env={**env, variable: "two"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"ConfigError: [CONFIG_ERROR] {variable} must be a positive whole number" in done.stderr
