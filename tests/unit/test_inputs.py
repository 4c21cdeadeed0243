"""The input adapters compiled in front of every network."""

import torch
import torchvision.transforms.v2 as T

from scripts.nets.inputs import BGRMeanInput, ImageNetInput, UnitScaleInput, WithInput

BATCH = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_imagenet_input_is_torchvisions_normalisation():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    reference = T.Normalize(mean, std)(T.ToDtype(torch.float32, scale=True)(BATCH))
    assert torch.allclose(ImageNetInput(mean, std)(BATCH), reference, atol=1e-5)


def test_unit_scale_and_bgr_mean_inputs():
    assert torch.allclose(UnitScaleInput()(BATCH), BATCH.float() / 255)
    converted = BGRMeanInput((104.0, 117.0, 123.0))(BATCH)
    assert torch.equal(converted[:, 0], BATCH[:, 2].float() - 104) and torch.equal(
        converted[:, 2], BATCH[:, 0].float() - 123
    )


def test_with_input_scripts_and_feeds_the_model():
    wrapped = torch.jit.script(WithInput(UnitScaleInput(), torch.nn.Identity()))
    assert torch.allclose(wrapped(BATCH), BATCH.float() / 255)
