"""A model's settings for the hardware its archive is built for.

Each model's YAML (scripts/configs/<model>.yaml) holds the CPU profile -- TorchServe's
keys at the top, the handler's under `handler:` -- and, under `gpu:`, what differs on a
GPU. `make archive DEVICE=cuda` archives the CPU profile with the `gpu:` block written
over it (a key at a time; `handler:` a setting at a time); a CPU archive carries the
file as it is (TorchServe's frontend and the handler ignore the `gpu:` key).
"""

from pathlib import Path

import yaml

from scripts.zoo import ModelSpec

PROFILES = ("cpu", "gpu")
# The TorchServe model-config keys a profile may set (ts ModelConfig, 0.12).
FRONTEND_KEYS = frozenset(
    {"minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout", "jobQueueSize"}
)


def model_config(spec: ModelSpec, profile: str = "cpu") -> dict:
    """The model's settings under `profile`, as TorchServe and the handler read them."""
    return resolve_profile(yaml.safe_load(spec.config_file.read_text()), profile, spec.config_file)


def resolve_profile(config: dict, profile: str, source: Path | str = "the model config") -> dict:
    """A model config mapping (with its optional `gpu:` block) -> the settings of `profile`.
    Raises ValueError for an unknown profile or a `gpu:` key that is not a profile setting."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    config = dict(config)
    overrides = config.pop("gpu", None) or {}
    unknown = sorted(set(overrides) - FRONTEND_KEYS - {"handler"})
    if unknown:
        raise ValueError(f"{source}: gpu: sets {unknown}, which are not TorchServe keys a profile may set")
    if profile == "cpu":
        return config
    handler = {**config.get("handler", {}), **overrides.get("handler", {})}
    return {**config, **{key: value for key, value in overrides.items() if key != "handler"}, "handler": handler}


def profile_file(spec: ModelSpec, profile: str, staging: Path) -> Path:
    """The model's YAML for an archive of `profile`: the file itself for the CPU, else the
    resolved settings written into `staging`, saying where they come from."""
    if profile == "cpu":
        return spec.config_file
    target = staging / spec.config_file.name
    source = f"scripts/configs/{spec.config_file.name}"
    header = f"# {spec.name}, {profile} profile: {source} with its {profile}: block applied\n"
    target.write_text(header + yaml.safe_dump(model_config(spec, profile), sort_keys=False))
    return target
