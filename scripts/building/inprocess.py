"""Run a zoo handler in this process exactly as a TorchServe worker does, without Java:
a context that records what the handler sets (statuses, headers, metrics) and a loader
for the zoo's handlers on a compiled model. The drift-reference build, the benchmarks
and the handler tests use it."""

import shutil
from collections import defaultdict
from pathlib import Path

from handlers.observers import STAGE_SECONDS
from scripts.building.profiles import model_config
from scripts.families import family
from scripts.zoo import REPO, get_model


class MetricsRecorder:
    """context.metrics: every value a handler emits, by metric name and labels."""

    def __init__(self):
        # (name, ((label, value), ...)) -> values, labels without TorchServe's ModelName and Level
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(list)

    def add_metric(self, name, value, unit, idx=None, dimensions=(), metric_type=None):
        labels = tuple((d.name, d.value) for d in dimensions if d.name not in ("ModelName", "Level"))
        self.values[(name, labels)].append(value)

    def add_time(self, name, value, idx=None, unit="ms"):
        self.values[(name, ())].append(value)

    def of(self, name: str, **labels: str) -> list[float]:
        """Every value of metric `name` with exactly these labels."""
        return self.values.get((name, tuple(labels.items())), [])

    def stage_ms(self) -> dict[str, list[float]]:
        """The handler's stage times (handlers/observers.py: STAGE_SECONDS) per stage, in milliseconds."""
        stage_seconds = STAGE_SECONDS
        return {
            dict(labels)["stage"]: [value * 1000 for value in values]
            for (name, labels), values in self.values.items()
            if name == stage_seconds
        }

    def clear(self) -> None:
        self.values.clear()


class FakeContext:
    """The parts of ts.context.Context a handler uses, recording what it sets."""

    def __init__(
        self,
        model_dir: Path,
        yaml_config: dict,
        name: str = "tiny",
        serialized_file: str = "model.pt",
        gpu_id: int | None = None,
    ):
        self.model_name = name
        self.manifest = {"model": {"modelName": name, "serializedFile": serialized_file}}
        batch_size = yaml_config.get("batchSize", 8)
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id, "batch_size": batch_size}
        self.model_yaml_config = yaml_config
        self.metrics = MetricsRecorder()
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}
        self.headers: dict[int, dict[str, str]] = defaultdict(dict)
        self.request_headers: dict[int, dict[str, str]] = {}  # what clients sent, per batch index

    def get_all_request_header(self, idx):
        return self.request_headers.get(idx, {})

    def set_response_status(self, code=200, phrase="", idx=0):
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_types[idx] = value

    def set_response_header(self, idx, key, value):
        self.headers[idx][key] = value

    def status(self, idx: int) -> int:
        return self.statuses.get(idx, (200, ""))[0]


def load_handler(
    model: str,
    model_dir: Path,
    batch_size: int | None = None,
    gpu_id: int | None = None,
    artifact: Path | None = None,
    handler_settings: dict | None = None,
):
    """The zoo's handler for `model`, initialised in-process on a copy of its compiled file
    (build/<artifact> unless `artifact` names another), with the model's YAML settings
    (`handler_settings` overriding its handler: section), on the GPU `gpu_id` when
    given, as TorchServe assigns one -> (handler, context)."""
    spec = get_model(model)
    config = model_config(spec, "cpu" if gpu_id is None else "gpu")  # the settings its archive would carry
    if batch_size:
        config["batchSize"] = batch_size
    config["handler"] = {**config.get("handler", {}), **(handler_settings or {})}
    # Served under the model's name with the artifact's own suffix: a TorchScript build of a
    # model the table compiles with AOTInductor (or the reverse) loads as what it is.
    serialized_file = spec.artifact if artifact is None else spec.name + Path(artifact).suffix
    shutil.copy(artifact or REPO / "build" / spec.artifact, model_dir / serialized_file)
    for companion in spec.companion_files(Path(artifact or REPO / "build" / spec.artifact)).values():
        shutil.copy(companion, model_dir)  # beside the compiled file, as its archive carries them
    task = family(spec.family)
    for data_file in task.data_files:
        shutil.copy(REPO / data_file, model_dir)
    context = FakeContext(model_dir, config, model, serialized_file, gpu_id)
    handler = task.handler()
    handler.initialize(context)
    return handler, context
