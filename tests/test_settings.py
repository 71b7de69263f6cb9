import pytest

from serving.settings import OPTIONS, SettingsError, load_settings


def test_defaults():
    settings = load_settings([], environ={})
    assert settings.batch_size == 8 and settings.host == "127.0.0.1" and settings.redis_url is None


def test_flag_beats_environment_beats_default():
    env = {"BATCH_SIZE": "8", "CLIENT_TIMEOUT": "2.5", "QUEUE_NAME": "from-env"}
    settings = load_settings(["--batch-size", "4"], environ=env)
    assert settings.batch_size == 4  # flag
    assert settings.client_timeout == 2.5  # environment
    assert settings.queue_name == "from-env"
    assert settings.port == 5000  # default


def test_every_option_has_a_flag_and_an_env_var():
    for option in OPTIONS:
        assert option.flag == "--" + option.name.replace("_", "-")
        assert option.env_var == option.name.upper()
        value = option.choices[-1] if option.choices else {int: "7", float: "0.75", str: "x"}[option.kind]
        value = "7" if option.name == "model_version" else value  # a version is a number
        value = "70" if option.name == "calibrate_on_traffic" else value  # 60 at least
        assert getattr(load_settings([], environ={option.env_var: value}), option.name) == option.kind(value)


@pytest.mark.parametrize(
    "env",
    [
        {"BATCH_SIZE": "many"},
        {"ROLE": "chef"},
        {"BATCH_SIZE": "0"},
        {"TRACING": "yes"},
        {"TRACE_SAMPLE_RATIO": "1.5"},
        {"TRACE_SAMPLE_RATIO": "nan"},
        {"LOG_FORMAT": "xml"},
        {"MODEL_VERSION": "v2"},
        {"MODEL_NAME": "a/b"},
        {"DEFAULT_MODEL": "{q}"},
    ],
)
def test_bad_values_are_reported(env):
    with pytest.raises(SettingsError):
        load_settings([], environ=env)
