"""The model table, its configs and the label file agree with each other."""

import inspect
import json
import zipfile
from pathlib import Path

import pytest
import torchvision
import yaml

from handlers.settings import settings_from_mapping
from handlers.tasks.classifier import ClassifierSettings
from handlers.tasks.detector import DetectorSettings
from handlers.tasks.face import FaceSettings
from scripts.building.archive import build_archive, handler_modules
from scripts.building.profiles import FRONTEND_KEYS, PROFILES, gpu_defaults, model_config, resolve_profile
from scripts.families import families
from scripts.zoo import MODELS, REPO, get_model

SETTINGS = {"classifier": ClassifierSettings, "detector": DetectorSettings, "face": FaceSettings,
            "centerface": FaceSettings}  # fmt: skip
TORCHSERVE_KEYS = FRONTEND_KEYS | {"handler"}


def test_issue_models_are_in_the_table():
    assert {"resnet18", "resnet50", "resnet152", "mobilenet_v2"} <= {spec.name for spec in MODELS}


def test_unknown_model_names_the_known_ones():
    with pytest.raises(KeyError, match="resnet18"):
        get_model("resnet19")


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("spec", MODELS, ids=lambda spec: spec.name)
def test_every_model_has_a_valid_config_in_each_profile(spec, profile):
    config = model_config(spec, profile)
    assert set(config) <= TORCHSERVE_KEYS
    assert 1 <= config["minWorkers"] <= config["maxWorkers"] and config["batchSize"] >= 1
    settings_from_mapping(SETTINGS[spec.family], config.get("handler"))  # raises on unknown keys


@pytest.mark.parametrize("spec", MODELS, ids=lambda spec: spec.name)
def test_the_gpu_profile_batches_more_and_queues_512_waiting_clients(spec):
    """The CPU profile is the file without its gpu: block; the GPU profile is the shared GPU
    settings (scripts/configs/gpu.yaml), then the model's own block, over the CPU profile."""
    raw, cpu, gpu = yaml.safe_load(spec.config_file.read_text()), model_config(spec), model_config(spec, "gpu")
    assert cpu == {key: value for key, value in raw.items() if key != "gpu"}
    assert gpu["batchSize"] > cpu["batchSize"] and gpu["jobQueueSize"] >= 512
    own = raw.get("gpu") or {}
    assert gpu["handler"] == {**cpu["handler"], **gpu_defaults()["handler"], **own.get("handler", {})}


def test_a_model_s_gpu_block_overrides_the_shared_one_key_by_key():
    config = {"batchSize": 2, "handler": {"top_k": 5}, "gpu": {"batchSize": 8, "handler": {"channels_last": False}}}
    gpu = resolve_profile(config, "gpu")
    assert gpu["batchSize"] == 8 and gpu["jobQueueSize"] == gpu_defaults()["jobQueueSize"]
    assert gpu["handler"] == {**gpu_defaults()["handler"], "top_k": 5, "channels_last": False}
    assert resolve_profile(config, "cpu") == {"batchSize": 2, "handler": {"top_k": 5}}


def test_a_profile_may_set_torchserve_keys_and_handler_settings_only():
    with pytest.raises(ValueError, match="gpu: sets \\['workers'\\]"):
        resolve_profile({"batchSize": 1, "gpu": {"workers": 2}}, "gpu")
    with pytest.raises(ValueError, match="unknown profile"):
        resolve_profile({}, "tpu")


def test_a_gpu_archive_carries_the_gpu_profile(tmp_path):
    spec = get_model("resnet50")
    (tmp_path / "model.pt").write_bytes(b"not read by the archiver")
    for profile in PROFILES:
        archive = build_archive(spec, tmp_path / "model.pt", tmp_path / profile, profile=profile)
        with zipfile.ZipFile(archive) as packed:
            carried = yaml.safe_load(packed.read("resnet50.yaml"))
        assert resolve_profile(carried, "cpu") == model_config(spec, profile)


def test_an_archive_carries_the_handler_modules_its_task_imports_and_no_others():
    tasks = {"classifier": "classifier.py", "detector": "detector.py", "face": "face.py", "centerface": "face.py"}
    for name, task in families().items():
        entry = Path(inspect.getfile(task.handler))
        carried = {path.relative_to(REPO / "handlers").as_posix() for path in handler_modules(entry)}
        assert {"__init__.py", "service.py", "edge.py", "engine.py", "tasks/__init__.py"} <= carried
        assert {f"tasks/{module}" for module in tasks.values()} & carried == {f"tasks/{tasks[name]}"}
        assert entry.parent == REPO / "handlers" and task.task.__module__ == f"handlers.tasks.{tasks[name][:-3]}"
        assert all((REPO / data).is_file() for data in task.data_files)
    assert {spec.family for spec in MODELS} <= set(families())  # every model's family is declared


def test_labels_are_torchvisions_imagenet_categories():
    labels = json.loads(Path(REPO / "index_to_name.json").read_text())
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    assert [labels[str(i)] for i in range(1000)] == weights.meta["categories"]


def test_a_companion_is_compiled_as_its_model_is_and_found_beside_it():
    """make archive builds each companion's own artifact; a GPU build that falls back to
    TorchScript compiles both so: the files a model's metadata names follow its own suffix."""
    for spec in MODELS:
        for companion in spec.companions:
            assert companion.compiler == spec.compiler, (spec.name, companion.name)
            assert spec.companion_files(Path("/b") / spec.artifact)[companion.name] == Path("/b") / companion.artifact
            assert spec.companion_files(Path("/b/x.pt"))[companion.name] == Path(f"/b/{companion.name}.pt")
