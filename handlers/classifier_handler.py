"""TorchServe handler for the ImageNet classifiers (ResNet, MobileNetV2, EfficientNet-Lite0)."""

from pathlib import Path

import torch

from batched_handler import BatchedImageHandler, Item, Response
from classification import ClassifierSettings, batched_top_k, load_labels
from imaging import resize_center_crop
from metrics import TOP1_PROBABILITY


class ClassifierHandler(BatchedImageHandler):
    settings_class = ClassifierSettings
    request_params = {"top_k": "top_k"}
    task = "classification"

    def setup(self, model_dir: Path) -> None:
        metadata = self.metadata
        self.labels = load_labels(model_dir / "index_to_name.json", metadata["num_classes"])
        self.resize_size, self.crop_size = metadata["resize_size"], metadata["input_size"][0]
        # The resize the weights were evaluated with (compiled models before it was recorded: bilinear).
        self.interpolation = metadata.get("interpolation", "bilinear")

    def decode_at_least(self, settings: ClassifierSettings) -> tuple[int, str]:
        return self.resize_size, "cover"  # the short side is resized to resize_size anyway

    def prepare(self, item: Item) -> tuple[torch.Tensor, None]:
        return resize_center_crop(item.image, self.resize_size, self.crop_size, self.interpolation), None

    def summarise(self, logits: torch.Tensor, items: list[Item]) -> list[list[dict]]:
        return batched_top_k(logits, [item.settings.top_k for item in items], self.labels)

    def postprocess(self, predictions: list[dict], item: Item) -> Response:
        self.observe(item, TOP1_PROBABILITY, predictions[0]["score"])
        return self.answer(item, predictions=predictions)
