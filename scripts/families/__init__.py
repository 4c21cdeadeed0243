"""Task families, each declared in one place: a module of this package that defines
FAMILY names its handler class (a handlers/ entry module's, which names the task class), the
data files copied beside it,
and its build Recipe (weights, eager network, parity check, metadata). scripts/zoo.py's
table names each model's family; the build tools find the family here by that name."""

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch

from scripts.families.weights import Weights
from scripts.zoo import ModelSpec


@dataclass(frozen=True)
class Recipe:
    """How one family is built: weights, eager model, check inputs, metadata, parity,
    and which input dimensions may vary in a torch.export graph."""

    resolve_weights: Callable[..., Weights]
    build: Callable[[ModelSpec, Weights], torch.nn.Module]
    example: Callable[[Weights], torch.Tensor]  # uint8 RGB [B, 3, H, W]: real photos, as the handler feeds them
    metadata: Callable[[ModelSpec, Weights], dict]
    check: Callable[..., float]  # (eager, compiled, precision) -> max abs difference
    input_adapter: Callable[[Weights], torch.nn.Module]  # uint8 RGB -> what the network expects
    # The network answering (*task outputs, features [B, D]) and where the features come from.
    with_features: Callable[[torch.nn.Module], torch.nn.Module]
    features: str
    spatial_dynamic: bool = False  # letterboxed families take any multiple of 32 as height/width
    # The handler's preparation of the photos checked against the weights' own (a classifier's
    # resize): raises ValueError beyond the family's tolerance, else the measured difference.
    check_input: Callable[[Weights], float] | None = None


@dataclass(frozen=True)
class Family:
    """What all models of one task share."""

    name: str  # what scripts/zoo.py's ModelSpec.family says
    handler: type  # the ZooHandler subclass TorchServe loads (handlers/<task>_handler.py): its task_class
    recipe: Recipe
    data_files: tuple[str, ...] = ()  # repo-relative files copied beside the handler

    @property
    def task(self) -> type:
        """The task plug-in (handlers/tasks/) its models are served by."""
        return self.handler.task_class


@cache
def families() -> dict[str, Family]:
    """Every family declared in this package, by name."""
    found = {}
    for module in pkgutil.iter_modules(__path__):
        declared = getattr(importlib.import_module(f"{__name__}.{module.name}"), "FAMILY", None)
        if isinstance(declared, Family):
            found[declared.name] = declared
    return found


def family(name: str) -> Family:
    try:
        return families()[name]
    except KeyError:
        raise KeyError(f"no family {name!r} in scripts/families/ (declared: {', '.join(sorted(families()))})") from None
