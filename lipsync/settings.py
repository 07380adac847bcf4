"""Configuration loading shared by both services: YAML validated by pydantic, env overrides.

Relative paths in a config file are resolved against the file's folder. Environment variables
override the addresses, ports and the avatars folder (`LIPSYNC_HOST`, `LIPSYNC_PORT`,
`LIPSYNC_INFERENCE_ADDRESS`, `LIPSYNC_AVATARS_DIR`); nothing is read at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MiB = 1024 * 1024


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(StrictModel):
    """Listening address and server limits of a service."""

    host: str = "0.0.0.0"
    port: int = Field(..., ge=0, le=65535, description="0 picks a free port")
    max_workers: int = Field(16, ge=1, le=1024, description="threads serving calls")
    max_message_bytes: int = Field(
        64 * MiB, ge=4 * MiB, le=1024 * MiB, description="send and receive limit per message"
    )
    grace_period_s: float = Field(10.0, ge=0, le=600, description="in-flight time on shutdown")
    malloc_tuning: bool = Field(
        True,
        description=(
            "raise glibc's mmap and trim thresholds so multi-megabyte message buffers are "
            "reused instead of page-faulted on every call; freed memory stays in the process"
        ),
    )

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


class LogConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class CapacityConfig(StrictModel):
    """How many avatars a tier keeps loaded, and how it chooses which to unload."""

    max_models: int = Field(0, ge=0, le=100_000, description="loaded avatars at most; 0: no limit")
    max_memory_bytes: int = Field(
        0, ge=0, description="measured memory of the loaded avatars at most; 0: no limit"
    )
    policy: Literal["lru", "lfu"] = Field(
        "lru", description="which idle avatar to evict: least recently or least frequently used"
    )
    idle_unload_s: float = Field(
        0.0, ge=0, le=7 * 24 * 3600, description="unload an avatar unused this long; 0: never"
    )


class ConfigError(Exception):
    """A configuration file is missing, unreadable or invalid; the message names the key."""


ConfigT = TypeVar("ConfigT", bound=BaseModel)

ENV_OVERRIDES = {
    "LIPSYNC_HOST": ("server", "host"),
    "LIPSYNC_PORT": ("server", "port"),
    "LIPSYNC_INFERENCE_ADDRESS": ("inference", "address"),
    "LIPSYNC_AVATARS_DIR": ("avatars_dir",),
}


def _has_path(model: type[BaseModel], keys: tuple[str, ...]) -> bool:
    """Return whether a config model has the nested field keys (so an override applies)."""
    for key in keys:
        field = model.model_fields.get(key)
        if field is None:
            return False
        model = field.annotation
        if key != keys[-1] and not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
    return True


def _apply_env(data: dict[str, Any], model: type[BaseModel], env: Mapping[str, str]) -> None:
    for name, keys in ENV_OVERRIDES.items():
        if name not in env or not _has_path(model, keys):
            continue
        target = data
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = env[name]


def _resolve_paths(config: BaseModel, base: Path) -> None:
    for name, value in config:
        if isinstance(value, Path) and not value.is_absolute():
            setattr(config, name, (base / value).resolve())
        elif isinstance(value, BaseModel):
            _resolve_paths(value, base)


def load_config(path: Path, model: type[ConfigT], env: Mapping[str, str] | None = None) -> ConfigT:
    """Read a YAML config file into `model`, apply env overrides and resolve relative paths."""
    env = os.environ if env is None else env
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys, got {type(data).__name__}")

    _apply_env(data, model, env)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid config {path}: {problems}") from exc

    _resolve_paths(config, path.resolve().parent)
    return config
