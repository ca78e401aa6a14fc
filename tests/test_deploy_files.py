"""compose.yaml, the Dockerfile and the README stay true to the code they describe."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from feature_store.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
APP_SERVICES = ("worker", "api", "compactor")


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_app_env_is_valid_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = COMPOSE["services"][service]
    for var, value in spec["environment"].items():
        monkeypatch.setenv(var, str(value))
    settings = load_settings()  # raises ConfigError on a typo'd or invalid variable
    assert settings.kafka == "kafka:9092"
    assert settings.redis == "redis://redis:6379/0"
    assert settings.data_dir.is_relative_to("/data")
    assert settings.registry.is_relative_to("/data")


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_app_waits_for_healthy_services_and_uses_a_real_repo(service: str) -> None:
    spec = COMPOSE["services"][service]
    assert spec["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    command = spec["command"]
    assert "data:/data" in spec["volumes"]
    if service == "compactor":  # a shell loop around the command; it needs no repo
        assert "featurestream compact" in command[-1]
        return
    assert command[:2] == ["featurestream", service if service == "worker" else "serve"]
    repo = command[command.index("--repo") + 1]
    assert (ROOT / repo / "features.py").is_file()


def test_compose_services_have_healthchecks() -> None:
    for name in ("kafka", "redis", "api"):
        assert COMPOSE["services"][name]["healthcheck"]["test"], name
    assert "/healthz" in " ".join(COMPOSE["services"]["api"]["healthcheck"]["test"])


def test_dockerfile_copies_every_package() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for pattern in packages:
        assert f"COPY {pattern.rstrip('*')} " in dockerfile
    for var in re.findall(r"(FEATURESTREAM_\w+)=", dockerfile):
        assert var.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, var


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [ENV_PREFIX + n.upper() for n in Settings.model_fields if f"`{ENV_PREFIX}{n.upper()}`" not in readme]
    assert not missing, f"add these to the README's configuration table: {missing}"


def test_readme_quick_start_is_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n\n```bash\n(.*?)```", readme, re.S)
    assert block is not None
    assert block.group(1).splitlines() == ["bash scripts/demo.sh", "bash scripts/test.sh"]
