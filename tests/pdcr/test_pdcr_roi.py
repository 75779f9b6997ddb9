"""RoI construction and validation, outcomes, Dice of empty sets, interventions and the model wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from triptych.core.errors import InputError
from triptych.pdcr.interventions import Blur, DatasetMean, PatchBank, Zero, apply_block, make_intervention
from triptych.pdcr.models import build_model, wrap_model
from triptych.pdcr.roi import RoI, dice, make_outcome


def test_box_pixel_mask_and_parse():
    roi = RoI.box(2, 3, 4, 5, (10, 12))
    assert roi.area == 20 and roi.mask[3:8, 2:6].all() and roi.bounding_box() == ((3, 8), (2, 6))
    assert RoI.pixel(11, 9, (10, 12)).mask[9, 11]
    assert RoI.parse("2,3,4,5", (10, 12)).area == 20
    assert RoI.parse("1,2,3,2,2,2", (8, 8, 8)).area == 8
    m = np.zeros((10, 12), dtype=np.uint8)
    m[1:3, 1:3] = 255
    assert RoI.from_mask(m, (10, 12)).area == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8,8,8,8", "leaves the image"),
        ("-1,0,2,2", "leaves the image"),
        ("2,2,0,3", "zero area"),
        ("a,b,c,d", "integers"),
        ("1,2,3", "needs"),
    ],
)
def test_bad_boxes_fail_with_one_line(text, message):
    with pytest.raises(InputError, match=message) as info:
        RoI.parse(text, (10, 12))
    assert "\n" not in str(info.value) and "--roi" in str(info.value)


def test_non_binary_and_misshaped_masks():
    with pytest.raises(InputError, match="not binary"):
        RoI.from_mask(np.arange(120).reshape(10, 12) % 3, (10, 12))
    with pytest.raises(InputError, match="differs"):
        RoI.from_mask(np.zeros((5, 5)), (10, 12))


def test_dice_empty_sets_is_one_and_values():
    a = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    np.testing.assert_allclose(dice(a, b).numpy(), [1.0, 1.0, 0.0])
    assert float(
        dice(torch.tensor([[1, 1, 1, 0]]).bool(), torch.tensor([[1, 0, 0, 0]]).bool())
    ) == pytest.approx(0.5)


def test_outcomes_dice_gt_self_and_soft_mass():
    net = torch.nn.Identity()
    model = wrap_model(
        net, spatial_dims=2, in_channels=1, out_channels=1, emits="probabilities", activation="sigmoid"
    )
    image = torch.zeros(1, 8, 8)
    image[0, 2:4, 2:4] = 0.9
    image[0, 2:4, 4:6] = 0.2
    roi = RoI.box(2, 2, 4, 2, (8, 8))
    gt = np.zeros((8, 8), dtype=bool)
    gt[2:4, 2:6] = True
    probs = model.probabilities(image[None])
    assert float(make_outcome("dice_gt", model, image, roi, gt)(probs)[0]) == pytest.approx(
        100 * 2 * 4 / (4 + 8)
    )
    assert float(make_outcome("dice_self", model, image, roi)(probs)[0]) == pytest.approx(100.0)
    assert float(make_outcome("soft_mass", model, image, roi)(probs)[0]) == pytest.approx(
        100 * (0.9 + 0.2) / 2
    )
    # an empty prediction against an empty truth is perfect agreement, not 0
    empty = make_outcome("dice_gt", model, torch.zeros(1, 8, 8), roi, np.zeros((8, 8)))
    assert float(empty(model.probabilities(torch.zeros(1, 1, 8, 8)))[0]) == 100.0
    with pytest.raises(InputError, match="needs a ground-truth"):
        make_outcome("dice_gt", model, image, roi, None)


def test_explicit_activation_is_used_never_guessed():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 1)
    x = torch.randn(2, 1, 4, 4)
    logits = wrap_model(
        net, spatial_dims=2, in_channels=1, out_channels=1, emits="logits", activation="sigmoid"
    )
    probs = wrap_model(
        net, spatial_dims=2, in_channels=1, out_channels=1, emits="probabilities", activation="sigmoid"
    )
    with torch.no_grad():
        torch.testing.assert_close(logits.probabilities(x), torch.sigmoid(net(x)))
        torch.testing.assert_close(probs.probabilities(x), net(x))
    with pytest.raises(InputError, match="softmax"):
        build_model("unet", out_channels=1, activation="softmax")
    multi = build_model(
        "unet", in_channels=1, out_channels=3, activation="softmax", target_class=1, features=(4, 8)
    )
    p = multi.probabilities(torch.rand(1, 1, 16, 16))
    torch.testing.assert_close(p.sum(1), torch.ones(1, 16, 16))
    assert multi.predict(torch.rand(1, 1, 16, 16)).dtype == torch.bool


def test_patch_bank_excludes_image_saves_and_samples(tmp_path):
    images = [torch.full((3, 32, 32), float(i)) for i in range(4)]
    bank = PatchBank.from_images(images, 8, per_image=5, exclude=2, excluded_name="img2", seed=0)
    assert bank.patches.shape == (15, 3, 8, 8) and bank.sources == 3
    assert not (bank.patches == 2.0).any()  # nothing from the explained image
    path = bank.save(tmp_path / "bank.safetensors")
    again = PatchBank.load(path)
    torch.testing.assert_close(again.patches, bank.patches)
    assert again.excluded == "img2"
    gen = torch.Generator().manual_seed(0)
    draws = bank.sample(images[0], (slice(0, 4), slice(0, 6)), 7, gen)
    assert draws.shape == (7, 3, 4, 6)
    with pytest.raises(InputError, match="larger than"):
        bank.sample(images[0], (slice(0, 16), slice(0, 16)), 1, gen)
    (tmp_path / "junk.safetensors").write_bytes(b"not a bank")
    with pytest.raises(InputError, match="not a readable patch bank"):
        PatchBank.load(tmp_path / "junk.safetensors")


def test_deterministic_interventions():
    image = torch.rand(2, 16, 16)
    block = (slice(4, 8), slice(0, 8))
    assert Zero().sample(image, block, 2, None).abs().sum() == 0
    mean = DatasetMean(torch.tensor([0.25, 0.75])).sample(image, block, 1, None)
    assert mean.shape == (1, 2, 4, 8) and float(mean[0, 1].mean()) == pytest.approx(0.75)
    blurred = Blur(sigma=2.0).sample(image, block, 1, None)
    assert blurred.shape == (1, 2, 4, 8) and float(blurred.std()) < float(image[:, 4:8, 0:8].std())
    out = apply_block(image, block, Zero().sample(image, block, 3, None))
    assert out.shape == (3, 2, 16, 16) and out[:, :, 4:8, 0:8].abs().sum() == 0
    torch.testing.assert_close(out[:, :, 8:], image[None, :, 8:].expand(3, -1, -1, -1))
    with pytest.raises(InputError, match="needs a dataset"):
        make_intervention("patch_bank")
    with pytest.raises(InputError, match="not known"):
        make_intervention("noise")
