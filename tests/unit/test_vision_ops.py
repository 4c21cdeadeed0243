"""handlers/vision_ops.py gives what torchvision's own functions give, and a worker that
imports the handlers and loads every kind of compiled model never imports torchvision's
Python package, torch._dynamo or sympy (what it would cost: docs/benchmarks.md, memory)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.io
import torchvision.ops
import torchvision.transforms.v2.functional as F

from handlers import vision_ops
from handlers.service import load_compiled_model
from scripts.samples.photos import encode, photo
from scripts.zoo import REPO, get_model

SIZES = [(300, 451), (1, 7), (480, 640), (641, 1000)]


@pytest.fixture(scope="module")
def cat() -> torch.Tensor:
    return torch.from_numpy(np.array(photo("chelsea"))).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_is_torchvisions(cat, size, antialias):
    assert torch.equal(vision_ops.resize(cat, size, antialias), F.resize(cat, list(size), antialias=antialias))


def test_resized_crop_is_torchvisions(cat):
    ours = vision_ops.resized_crop(cat, 20, 60, 250, 250, (224, 224), antialias=True)
    assert torch.equal(ours, F.resized_crop(cat, 20, 60, 250, 250, [224, 224], antialias=True))


@pytest.mark.parametrize("shape", [(3, 2, 2), (3, 8, 5), (3, 16, 16)])
def test_gaussian_blur_is_torchvisions(shape):
    cells = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255
    expected = F.gaussian_blur(cells, [3, 3], sigma=1.0)
    assert torch.allclose(vision_ops.gaussian_blur(cells, 3, sigma=1.0), expected, atol=1e-4)


def random_boxes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=generator) * 600
    sizes = torch.rand(count, 2, generator=generator) * 120 + 1
    scores = torch.rand(count, generator=generator)
    classes = torch.randint(0, 5, (count,), generator=generator)
    return torch.cat([corners, corners + sizes], dim=1), scores, classes


@pytest.mark.parametrize("count", [0, 1, 50, 2000])
def test_nms_is_torchvisions(count):
    boxes, scores, classes = random_boxes(count, seed=count)
    assert torch.equal(vision_ops.nms(boxes, scores, 0.45), torchvision.ops.nms(boxes, scores, 0.45))
    ours = vision_ops.batched_nms(boxes, scores, classes, 0.45)
    assert torch.equal(ours, torchvision.ops.batched_nms(boxes, scores, classes, 0.45))


def test_box_conversion_is_torchvisions():
    boxes = torch.tensor([[50.0, 40.0, 20.0, 10.0], [0.5, 0.5, 1.0, 1.0]])
    assert torch.equal(vision_ops.cxcywh_to_xyxy(boxes), torchvision.ops.box_convert(boxes, "cxcywh", "xyxy"))


def test_codecs_are_torchvisions():
    data = torch.frombuffer(bytearray(encode(photo("astronaut"), "JPEG")), dtype=torch.uint8)
    image = vision_ops.decode_jpeg(data)
    assert torch.equal(image, torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB))
    (batched,) = vision_ops.decode_jpegs([data], torch.device("cpu"))
    assert torch.equal(batched, image)
    assert torch.equal(vision_ops.encode_jpeg(image, 80), torchvision.io.encode_jpeg(image, quality=80))
    with pytest.raises(ValueError, match="quality"):
        vision_ops.encode_jpeg(image, 0)


@pytest.mark.parametrize("model", ["face_pixelizer", "yolov5s"])
def test_an_aoti_package_answers_as_torch_loads_it(model):
    path = REPO / "build" / get_model(model).artifact
    if not path.is_file():
        pytest.skip(f"{path.name} not built (make archive)")
    ours, _metadata = load_compiled_model(path, torch.device("cpu"))
    batch = torch.full((2, 3, 640, 640), 114, dtype=torch.uint8)
    expected = torch._inductor.aoti_load_package(str(path))(batch)
    answer = ours(batch)
    assert type(answer) is type(expected)
    for got, want in zip(*(a if isinstance(a, (tuple, list)) else [a] for a in (answer, expected)), strict=True):
        assert torch.equal(got, want)


def test_a_worker_never_imports_torchvision_dynamo_or_sympy():
    artifacts = [REPO / "build" / get_model(m).artifact for m in ("mobilenet_v2", "face_pixelizer")]
    if not all(path.is_file() for path in artifacts):
        pytest.skip("models not built (make archive)")
    code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import torch
import handlers.classifier_handler, handlers.detector_handler, handlers.face_pixelizer_handler
from handlers.service import load_compiled_model
for path in {[str(p) for p in artifacts]!r}:
    load_compiled_model(path, torch.device("cpu"))
print(sorted(name for name in ("torchvision", "torch._dynamo", "sympy") if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("seed", range(4))
def test_rank_within_groups_against_sorting_each_group(seed):
    generator = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 5, (300,), generator=generator)
    scores = torch.rand(300, generator=generator)
    ranks = vision_ops.rank_within_groups(groups, scores)
    for group in range(5):
        members = (groups == group).nonzero().squeeze(1)
        expected = torch.empty_like(members)
        expected[scores[members].argsort(descending=True)] = torch.arange(len(members))
        assert torch.equal(ranks[members], expected)
    assert vision_ops.rank_within_groups(torch.empty(0, dtype=torch.int64), torch.empty(0)).numel() == 0


def test_batched_nms_keeps_groups_apart_even_with_negative_coordinates_and_many_groups():
    """Two identical boxes in different groups both survive, whatever their coordinates;
    within one group the lower one is suppressed."""
    box = torch.tensor([[-30.0, -30.0, 10.0, 10.0]])
    boxes = box.repeat(4, 1)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    groups = torch.tensor([0, 1, 5000, 5000])  # thousands of groups: an image and a class each
    assert sorted(vision_ops.batched_nms(boxes, scores, groups, 0.5).tolist()) == [0, 1, 2]


def test_nms_chunks_join_images_of_one_threshold_up_to_the_limit():
    counts, thresholds = [3, 0, 4, 5, 2, 2, 9, 1], [0.5, 0.5, 0.5, 0.5, 0.4, 0.4, 0.4, 0.4]
    # image 1 has no boxes; 3 + 4 fit in 8, 5 more do not; 0.4 starts a run; 9 is alone over 8
    assert vision_ops.nms_chunks(counts, thresholds, 8) == [[0, 2], [3], [4, 5], [6], [7]]
    assert vision_ops.nms_chunks(counts, [0.5] * 8, 100) == [[0, 2, 3, 4, 5, 6, 7]]
    assert vision_ops.nms_chunks([0, 0], [0.5, 0.5], 8) == []


@pytest.mark.parametrize("limit", [1, 40, 1024])
@pytest.mark.parametrize("seed", range(3))
def test_nms_per_image_keeps_what_nms_on_each_image_alone_keeps(monkeypatch, seed, limit):
    """Whichever images share an NMS call, each keeps the boxes it keeps alone: boxes of
    different images (placed on top of each other here) never suppress each other."""
    monkeypatch.setattr(vision_ops, "NMS_BATCH_BOXES", limit)
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 6, (150,), generator=generator)
    corners = torch.rand(150, 2, generator=generator) * 100
    boxes = torch.cat([corners, corners + torch.rand(150, 2, generator=generator) * 40 + 1], dim=1)
    scores = torch.rand(150, generator=generator)
    classes = torch.randint(0, 3, (150,), generator=generator)
    thresholds = [0.5, 0.5, 0.3, 0.5, 0.5, 0.7]
    kept = vision_ops.nms_per_image(boxes, scores, image * 3 + classes, image, thresholds)
    expected = []
    for index, threshold in enumerate(thresholds):
        for label in range(3):
            members = ((image == index) & (classes == label)).nonzero().squeeze(1)
            expected += members[torchvision.ops.nms(boxes[members], scores[members], threshold)].tolist()
    assert sorted(kept.tolist()) == sorted(expected)


def test_to_device_on_the_cpu_returns_the_images_themselves():
    images = [torch.zeros(3, 4, 5, dtype=torch.uint8), torch.ones(3, 2, 2, dtype=torch.uint8)]
    assert all(a is b for a, b in zip(vision_ops.to_device(images, torch.device("cpu")), images, strict=True))


def test_to_device_packs_splits_and_reshapes_in_order(monkeypatch):
    """The packing as it runs for a GPU, checked on the CPU through the 'meta'-free path:
    packed into one flat tensor and split back into views of the original shapes."""
    images = [torch.arange(60, dtype=torch.uint8).view(3, 4, 5), torch.full((3, 2, 2), 7, dtype=torch.uint8)]
    moved = vision_ops.to_device(images, torch.device("meta"))
    assert [tuple(m.shape) for m in moved] == [(3, 4, 5), (3, 2, 2)] and moved[0].device.type == "meta"


def test_encode_jpegs_equals_encoding_each():
    images = [torch.randint(0, 256, (3, 16, 24), dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8)]
    together = vision_ops.encode_jpegs(images, 85)
    assert all(torch.equal(a, vision_ops.encode_jpeg(image, 85)) for a, image in zip(together, images, strict=True))


def test_the_jpeg_encoder_reads_an_image_in_any_layout_alike():
    """The JPEG decoder leaves [3, H, W] stored as rows of RGB pixels, which libjpeg reads in
    place; a channel-planar copy of it encodes to the same bytes."""
    decoded = vision_ops.decode_jpeg(torch.frombuffer(bytearray(encode(photo("chelsea"), "JPEG")), dtype=torch.uint8))
    assert decoded.stride()[0] == 1 and not decoded.is_contiguous()  # rows of RGB pixels
    assert torch.equal(vision_ops.encode_jpeg(decoded, 90), vision_ops.encode_jpeg(decoded.contiguous(), 90))


def test_moved_packs_tensors_of_any_strides_into_one_copy_and_gives_each_back():
    image = torch.arange(60, dtype=torch.uint8).view(3, 4, 5)
    tensors = [image, image.permute(1, 2, 0), torch.tensor([7, 8], dtype=torch.uint8)]
    moved = vision_ops.moved(tensors, torch.device("cpu"))
    assert all(m.is_contiguous() and torch.equal(m, t) for m, t in zip(moved, tensors, strict=True))
    assert moved[0].untyped_storage().data_ptr() == moved[2].untyped_storage().data_ptr()  # one buffer
    assert vision_ops.moved([], torch.device("cpu")) == []


def test_the_jpeg_encoder_is_never_called_beyond_what_libjpeg_takes():
    """Beyond 65,500 pixels a side libjpeg's default error handler ends the process: the
    call is refused with a ValueError first (this test would die, not fail, otherwise)."""
    at_the_limit = torch.zeros(3, 1, vision_ops.JPEG_MAX_SIDE, dtype=torch.uint8)
    assert vision_ops.encode_jpeg(at_the_limit, 90).numel() > 0
    for shape in ((3, 1, vision_ops.JPEG_MAX_SIDE + 1), (3, vision_ops.JPEG_MAX_SIDE + 1, 1), (3, 0, 5)):
        with pytest.raises(ValueError, match="a JPEG holds 1 to 65500 pixels a side"):
            vision_ops.encode_jpeg(torch.zeros(shape, dtype=torch.uint8), 90)
        with pytest.raises(ValueError):
            vision_ops.encode_jpegs([torch.zeros(shape, dtype=torch.uint8)], 90)


def test_the_gpu_decode_path_applies_the_exif_orientation(monkeypatch):
    """nvJPEG (torchvision.io.decode_jpeg on CUDA) ignores the EXIF orientation: a phone
    photo would be served turned, its boxes and hidden faces in the wrong place. The CUDA
    branch reads it from each header and turns the decoded image itself; here it runs on
    the CPU with a stand-in for nvJPEG that decodes as it does (orientation ignored), and
    gives exactly what the CPU decoder gives, for every orientation, in one batch."""
    base = photo("chelsea").resize((64, 40))
    datas = []
    for orientation in range(1, 9):
        datas.append(torch.frombuffer(bytearray(encode(base, "JPEG", orientation, quality=95)), dtype=torch.uint8))

    def nvjpeg(batch, mode, device, apply_exif_orientation=False):
        return [torch.ops.image.decode_jpeg(data, vision_ops.RGB, False) for data in batch]  # orientation ignored

    monkeypatch.setattr(torchvision.io, "decode_jpeg", nvjpeg)
    on_gpu = vision_ops.decode_jpegs(datas, torch.device("cuda"))
    on_cpu = vision_ops.decode_jpegs(datas, torch.device("cpu"))
    assert [tuple(image.shape[1:]) for image in on_cpu] == [(40, 64)] * 4 + [(64, 40)] * 4
    assert all(torch.equal(gpu, cpu) for gpu, cpu in zip(on_gpu, on_cpu, strict=True))
    assert vision_ops.exif_orientation(b"not a jpeg") == 1
