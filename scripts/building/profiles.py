"""A model's settings for the hardware its archive is built for.

Each model's YAML (scripts/configs/<model>.yaml) holds the CPU profile -- TorchServe's
keys at the top, the handler's under `handler:` -- and, under an optional `gpu:`, what
differs for it on a GPU from the GPU profile every model shares (scripts/configs/gpu.yaml).
`make archive DEVICE=cuda` archives the CPU profile with the shared GPU settings and then
the model's `gpu:` block written over it (a key at a time; `handler:` a setting at a
time); a CPU archive carries the file as it is (TorchServe's frontend and the handler
ignore the `gpu:` key).
"""

from pathlib import Path

import yaml

from scripts.zoo import CONFIG_DIR, ModelSpec

PROFILES = ("cpu", "gpu")
# The TorchServe model-config keys a profile may set (ts ModelConfig, 0.12).
FRONTEND_KEYS = frozenset(
    {"minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout", "jobQueueSize"}
)
GPU_DEFAULTS = CONFIG_DIR / "gpu.yaml"  # what every model's GPU profile starts from


def gpu_defaults() -> dict:
    return yaml.safe_load(GPU_DEFAULTS.read_text())


def model_config(spec: ModelSpec, profile: str = "cpu") -> dict:
    """The model's settings under `profile`, as TorchServe and the handler read them."""
    return resolve_profile(yaml.safe_load(spec.config_file.read_text()), profile, spec.config_file)


def resolve_profile(config: dict, profile: str, source: Path | str = "the model config") -> dict:
    """A model config mapping (with its optional `gpu:` block) -> the settings of `profile`.
    Raises ValueError for an unknown profile or a `gpu:` key that is not a profile setting."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    config = dict(config)
    own = config.pop("gpu", None) or {}
    for settings, where in ((own, f"{source}: gpu:"), (gpu_defaults(), GPU_DEFAULTS.name)):
        unknown = sorted(set(settings) - FRONTEND_KEYS - {"handler"})
        if unknown:
            raise ValueError(f"{where} sets {unknown}, which are not TorchServe keys a profile may set")
    if profile == "cpu":
        return config
    for overrides in (gpu_defaults(), own):
        handler = {**config.get("handler", {}), **overrides.get("handler", {})}
        config = {**config, **{key: value for key, value in overrides.items() if key != "handler"}, "handler": handler}
    return config


def profile_file(spec: ModelSpec, profile: str, staging: Path) -> Path:
    """The model's YAML for an archive of `profile`: the file itself for the CPU, else the
    resolved settings written into `staging`, saying where they come from."""
    if profile == "cpu":
        return spec.config_file
    target = staging / spec.config_file.name
    source = f"scripts/configs/{spec.config_file.name}"
    shared = f"scripts/configs/{GPU_DEFAULTS.name}"
    header = f"# {spec.name}, {profile} profile: {source} with {shared} and its {profile}: block applied\n"
    target.write_text(header + yaml.safe_dump(model_config(spec, profile), sort_keys=False))
    return target
