"""Read ultralytics/yolov5 checkpoints safely, without the yolov5 code.

A release checkpoint (`yolov5s.pt`, ...) is a pickled dict whose `model` (or `ema`)
entry is a pickled `models.yolo.DetectionModel`: fp16 tensors inside instances of
`models.common.Conv/C3/SPPF/Bottleneck/Concat`, `models.yolo.Detect` and torch.nn
layers. Unpickling it normally would import those classes and run whatever the
pickle asks for. Here `torch.load(weights_only=True)` refuses every global that is
not on an allow-list, and the yolov5 classes on that list are inert stand-ins
(plain nn.Module subclasses with the same module and class names): the pickle can
only fill them with data, from which we take the state dict and the class names.
"""

import pickle
from pathlib import Path

import torch
from torch import nn


class CheckpointError(Exception):
    """The file is not a checkpoint we accept; the message says why."""


# The yolov5 classes a v6.0-v7.0 P5 detection checkpoint may reference.
YOLOV5_CLASSES = {
    "models.common": ("Conv", "C3", "SPPF", "Bottleneck", "Concat"),
    "models.yolo": ("DetectionModel", "Model", "Detect"),
}
# The torch.nn layers those models are made of.
TORCH_LAYERS = (
    nn.Sequential,
    nn.ModuleList,
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.SiLU,
    nn.Upsample,
    nn.MaxPool2d,
    nn.Identity,
)


def _stand_in(module: str, name: str) -> type:
    """An nn.Module subclass that unpickles as `module.name` and does nothing else."""
    doc = f"Inert stand-in for {module}.{name}: holds unpickled parameters, runs no code."
    return type(name, (nn.Module,), {"__module__": module, "__qualname__": name, "__doc__": doc})


STAND_INS = [_stand_in(module, name) for module, names in YOLOV5_CLASSES.items() for name in names]
ALLOWED_GLOBALS = [*STAND_INS, *TORCH_LAYERS, set]


def load_yolov5_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """(float32 state dict, class names or None) from a release checkpoint or a plain
    state dict. Anything else -- including any pickle that names a global outside the
    allow-list -- raises CheckpointError before a single object of it is built."""
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} was refused: it is not a plain state dict or an ultralytics/yolov5 checkpoint, "
            f"and loading it would need objects outside the allow-list ({err})"
        ) from err
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {err}") from err
    return _extract(checkpoint, path)


def _extract(checkpoint: object, path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    names = None
    if isinstance(checkpoint, dict) and not _is_state_dict(checkpoint):
        model = checkpoint.get("ema") or checkpoint.get("model")  # as ultralytics' attempt_load
        if isinstance(model, nn.Module):
            names = _class_names(getattr(model, "names", None))
            checkpoint = model.state_dict()
        else:
            checkpoint = model
    if not isinstance(checkpoint, dict) or not _is_state_dict(checkpoint):
        raise CheckpointError(f"{path} holds neither a state dict nor a model under 'ema' or 'model'")
    return {key: value.float() for key, value in checkpoint.items()}, names


def _is_state_dict(mapping: dict) -> bool:
    return bool(mapping) and all(isinstance(value, torch.Tensor) for value in mapping.values())


def _class_names(names: object) -> list[str] | None:
    """ultralytics stores names as a list (<= v6) or as {index: name} (v7)."""
    if isinstance(names, dict):
        return [str(names[index]) for index in sorted(names)]
    if isinstance(names, (list, tuple)):
        return [str(name) for name in names]
    return None
