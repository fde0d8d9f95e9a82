"""PyramidNet (pipeline.models.pyramidnet) against independent references: the published parameter
counts and output widths, the exact counts of the authors' code, the paper's width rule computed
by hand, a naive functional forward written from the paper's description, and timm's own helpers
(create_model, features_only, pretrained loading of our exported weights)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import pipeline.models  # noqa: F401 - registers the PyramidNets with timm
from pipeline.export import export_weights
from pipeline.models.pyramidnet import PyramidNet

ARCHITECTURES = {  # name: (depth, alpha, bottleneck), from the paper's and the authors' tables
    "pyramidnet20_a48": (20, 48, False),
    "pyramidnet110_a48": (110, 48, False),
    "pyramidnet110_a84": (110, 84, False),
    "pyramidnet110_a270": (110, 270, False),
    "pyramidnet164_a48": (164, 48, True),
    "pyramidnet164_a270": (164, 270, True),
    "pyramidnet200_a240": (200, 240, True),
    "pyramidnet236_a220": (236, 220, True),
    "pyramidnet272_a200": (272, 200, True),
}
# Parameters of clovaai/CutMix-PyTorch's pyramidnet.py (commit 5ee7b8d; the authors' PyramidNet.py
# with ImageNet added), PyramidNet("cifar100", depth, alpha, classes, bottleneck), counted by
# running that code (its CUDA-only zero padding replaced by torch.zeros): (10 classes, 100 classes).
AUTHORS_CODE_COUNTS = {
    "pyramidnet20_a48": (310_845, 316_695),
    "pyramidnet110_a48": (1_772_706, 1_778_556),
    "pyramidnet110_a84": (3_904_446, 3_913_536),
    "pyramidnet110_a270": (28_485_477, 28_511_307),
    "pyramidnet164_a48": (1_715_442, 1_738_572),
    "pyramidnet164_a270": (27_216_021, 27_319_071),
    "pyramidnet200_a240": (26_752_702, 26_844_952),
    "pyramidnet236_a220": (26_969_046, 27_054_096),
    "pyramidnet272_a200": (26_210_842, 26_288_692),
}
# Published parameter counts (millions, as rounded there) and the class count each is for.
# The PyramidNet table (Han et al. CVPR 2017, Table 4; the same in jhkim89/PyramidNet's README)
# gives one count for its CIFAR-10 and CIFAR-100 columns: both class counts are tried.
PUBLISHED_REPRODUCED = [
    ("pyramidnet200_a240", 100, 26.8, "CutMix paper (Yun et al. 2019), Table 3, CIFAR-100"),
    ("pyramidnet164_a48", 10, 1.7, "PyramidNet table, CIFAR-10"),
    ("pyramidnet164_a48", 100, 1.7, "PyramidNet table, CIFAR-100"),
]
# Figures of the PyramidNet table that the authors' own PyTorch code does not reproduce at either
# class count (it builds 0.3-4% more: see AUTHORS_CODE_COUNTS). Our model follows the code, which
# also gives the CutMix paper's 26.8M for PyramidNet-200; these stay here, expected to differ.
PUBLISHED_NOT_REPRODUCED = [
    ("pyramidnet110_a48", 1.7), ("pyramidnet110_a84", 3.8), ("pyramidnet110_a270", 28.3),
    ("pyramidnet164_a270", 27.0), ("pyramidnet200_a240", 26.6), ("pyramidnet236_a220", 26.8),
    ("pyramidnet272_a200", 26.0),
]
# "Output feat. dimension" of the authors' tables (jhkim89/PyramidNet README).
PUBLISHED_FEATURES = {"pyramidnet110_a48": 64, "pyramidnet110_a84": 100, "pyramidnet110_a270": 286,
                      "pyramidnet164_a48": 256, "pyramidnet164_a270": 1144, "pyramidnet200_a240": 1024,
                      "pyramidnet236_a220": 944, "pyramidnet272_a200": 864}


def meta_model(name: str, num_classes: int):
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
        return timm.create_model(name, num_classes=num_classes)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def paper_parameter_count(depth: int, alpha: int, bottleneck: bool, classes: int) -> int:
    """Parameters from the paper's description: 16-channel 3x3 stem + BN; unit k of N has
    16 + alpha*k/N (rounded) channels; basic: BN, 3x3, BN, 3x3, BN; bottleneck: BN, 1x1, BN, 3x3,
    BN, 1x1 (x4), BN; no conv biases; final BN and linear classifier."""
    units = 3 * ((depth - 2) // (9 if bottleneck else 6))
    count, in_chs = 3 * 9 * 16 + 2 * 16, 16
    for k in range(1, units + 1):
        planes = math.floor(16 + alpha * k / units + 0.5)
        if bottleneck:
            out = 4 * planes
            count += 2 * in_chs + in_chs * planes + 2 * planes + 9 * planes * planes + 2 * planes
            count += planes * out + 2 * out
        else:
            out = planes
            count += 2 * in_chs + 9 * in_chs * planes + 2 * planes + 9 * planes * planes + 2 * planes
        in_chs = out
    return count + 2 * in_chs + in_chs * classes + classes


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_parameter_counts_equal_the_authors_code_and_the_paper_description(name):
    for classes, expected in zip((10, 100), AUTHORS_CODE_COUNTS[name]):
        count = parameter_count(meta_model(name, classes))
        assert count == expected, (name, classes)
        assert count == paper_parameter_count(*ARCHITECTURES[name], classes), (name, classes)


@pytest.mark.parametrize("name, classes, millions, source", PUBLISHED_REPRODUCED)
def test_parameter_counts_round_to_the_published_figures(name, classes, millions, source):
    assert round(parameter_count(meta_model(name, classes)) / 1e6, 1) == millions, source


@pytest.mark.xfail(strict=True, reason="the PyramidNet table's count is not what the authors' code builds")
@pytest.mark.parametrize("name, millions", PUBLISHED_NOT_REPRODUCED)
def test_parameter_counts_of_the_pyramidnet_table_not_reproduced_by_its_code(name, millions):
    counts = {round(parameter_count(meta_model(name, classes)) / 1e6, 1) for classes in (10, 100)}
    assert millions in counts


@pytest.mark.parametrize("name, features", PUBLISHED_FEATURES.items())
def test_output_feature_dimension_is_the_published_one(name, features):
    model = meta_model(name, 100)
    assert model.num_features == features and model.get_classifier().in_features == features


def test_unit_widths_follow_the_additive_rule():
    # PyramidNet-20, alpha 48: N = 9 units, widths 16 + 48k/9 rounded, by hand.
    model = timm.create_model("pyramidnet20_a48", num_classes=10)
    widths = [unit.conv1.out_channels for stage in (model.layer1, model.layer2, model.layer3) for unit in stage]
    assert widths == [21, 27, 32, 37, 43, 48, 53, 59, 64]
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3)] == [3, 3, 3]


def randomize_batch_norm(model, seed: int) -> None:
    """Running statistics and affine parameters away from their initial 0/1, so that evaluation
    exercises every one of them."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.rand(size, generator=generator) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)


def naive_forward(state: dict, x: torch.Tensor, *, bottleneck: bool, shakedrop: bool) -> torch.Tensor:
    """The paper's network in evaluation, from its description and the parameters alone."""
    def bn(t, name):
        return F.batch_norm(t, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                            state[f"{name}.bias"], training=False, eps=1e-5)

    units = [(stage, index) for stage in (1, 2, 3) for index in range(99)
             if f"layer{stage}.{index}.bn1.weight" in state]
    out = bn(F.conv2d(x, state["conv1.weight"], padding=1), "bn1")  # no ReLU after the stem
    for number, (stage, index) in enumerate(units, start=1):
        p, stride = f"layer{stage}.{index}", 2 if stage > 1 and index == 0 else 1
        if bottleneck:
            h = F.conv2d(bn(out, f"{p}.bn1"), state[f"{p}.conv1.weight"])
            h = F.conv2d(F.relu(bn(h, f"{p}.bn2")), state[f"{p}.conv2.weight"], stride=stride, padding=1)
            h = bn(F.conv2d(F.relu(bn(h, f"{p}.bn3")), state[f"{p}.conv3.weight"]), f"{p}.bn4")
        else:
            h = F.conv2d(bn(out, f"{p}.bn1"), state[f"{p}.conv1.weight"], stride=stride, padding=1)
            h = bn(F.conv2d(F.relu(bn(h, f"{p}.bn2")), state[f"{p}.conv2.weight"], padding=1), f"{p}.bn3")
        if shakedrop:  # evaluation: E[b + alpha - b*alpha] = 1 - p_l, p_l = 0.5 * l / L
            h = h * (1 - 0.5 * number / len(units))
        shortcut = F.avg_pool2d(out, 2) if stride == 2 else out
        zeros = torch.zeros(x.shape[0], h.shape[1] - shortcut.shape[1], *shortcut.shape[2:], dtype=x.dtype)
        out = h + torch.cat([shortcut, zeros], dim=1)
    out = F.relu(bn(out, "bn_final"))
    return out.mean(dim=(2, 3)) @ state["fc.weight"].T + state["fc.bias"]


@pytest.mark.parametrize("depth, alpha, bottleneck, shakedrop", [
    (20, 48, False, False), (20, 48, False, True), (29, 24, True, False), (29, 24, True, True)])
def test_evaluation_equals_a_naive_forward_of_the_paper_network(depth, alpha, bottleneck, shakedrop):
    torch.manual_seed(0)
    model = PyramidNet(depth=depth, alpha=alpha, bottleneck=bottleneck, num_classes=7, shakedrop=shakedrop).double()
    randomize_batch_norm(model, seed=1)
    model.eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    state = {key: value for key, value in model.state_dict().items()}
    with torch.no_grad():
        expected = naive_forward(state, x, bottleneck=bottleneck, shakedrop=shakedrop)
        tolerance = 1e-6 if shakedrop else 1e-10  # ShakeDrop keeps its p_l in a float32 buffer
        torch.testing.assert_close(model(x), expected, rtol=tolerance, atol=tolerance)


def test_timm_interface_and_cam_from_features_and_classifier_weights():
    torch.manual_seed(0)
    model = timm.create_model("pyramidnet20_a48", num_classes=10).eval()
    assert timm.create_model("pyramidnet20_a48").num_classes == 100  # CIFAR-100 by default
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        assert features.shape == (2, 64, 8, 8) and features.min() >= 0  # after the final BN-ReLU
        assert torch.equal(logits, model.forward_head(features))
        classifier = model.get_classifier()
        # CAM (Zhou et al. 2016): class maps from the features and the classifier weights; their
        # spatial mean plus the bias is the logit.
        cam = torch.einsum("kc,nchw->nkhw", classifier.weight, features)
        torch.testing.assert_close(cam.mean(dim=(2, 3)) + classifier.bias, logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features.mean(dim=(2, 3)))
        model.reset_classifier(7)
        assert model(x).shape == (2, 7) and model.get_classifier().out_features == 7
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), features.mean(dim=(2, 3)))


def test_feature_info_names_the_stages_that_hooks_and_timm_features_only_see():
    torch.manual_seed(0)
    model = timm.create_model("pyramidnet20_a48", num_classes=10).eval()
    info = model.feature_info
    assert [(e["module"], e["num_chs"], e["reduction"]) for e in info] == [
        ("bn1", 16, 1), ("layer1", 32, 1), ("layer2", 48, 2), ("layer3", 64, 4)]
    hooked = []
    for entry in info:
        model.get_submodule(entry["module"]).register_forward_hook(lambda m, args, out: hooked.append(out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
    for entry, output in zip(info, hooked):
        assert output.shape == (2, entry["num_chs"], 32 // entry["reduction"], 32 // entry["reduction"])
    backbone = timm.create_model("pyramidnet20_a48", features_only=True).eval()
    assert backbone.feature_info.channels() == [16, 32, 48, 64]
    weights = model.state_dict()
    backbone.load_state_dict({key: weights[key] for key in backbone.state_dict()})  # the stem and the stages
    with torch.no_grad():
        for expected, output in zip(hooked, backbone(x), strict=True):
            assert torch.equal(expected, output)


@pytest.mark.parametrize("shakedrop", [False, True])
def test_exported_weights_load_in_timm_with_identical_logits(tmp_path, shakedrop):
    torch.manual_seed(0)
    model = timm.create_model("pyramidnet20_a48", num_classes=10, shakedrop=shakedrop)
    randomize_batch_norm(model, seed=3)  # weights unlike any fresh model's
    path = export_weights(model, tmp_path / "model.safetensors", model_name="pyramidnet20_a48", num_classes=10)
    extra = {"shakedrop": True} if shakedrop else {}
    loaded = timm.create_model("pyramidnet20_a48", pretrained=True, num_classes=10, **extra,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    fresh = timm.create_model("pyramidnet20_a48", num_classes=10, **extra).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exported = model.eval()(x)
        assert torch.equal(loaded(x), exported)
        assert not torch.allclose(fresh(x), exported)
    if shakedrop:  # its evaluation scaling is in the weights: a model without ShakeDrop refuses them
        with pytest.raises(RuntimeError, match="Unexpected key"):
            timm.create_model("pyramidnet20_a48", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=10))


@pytest.mark.parametrize("shakedrop", [False, True])
def test_the_exported_load_line_rebuilds_the_model(tmp_path, shakedrop, monkeypatch):
    # The .json beside the weights says how to load them; run that line as a user would, from
    # another folder than the export's (a relative path in it was the training's folder's).
    torch.manual_seed(0)
    model = timm.create_model("pyramidnet20_a48", num_classes=10, shakedrop=shakedrop)
    randomize_batch_norm(model, seed=4)
    monkeypatch.chdir(tmp_path)
    path = export_weights(model, Path("run") / "model.safetensors", model_name="pyramidnet20_a48", num_classes=10,
                          model_options={"shakedrop": True} if shakedrop else {})
    line = json.loads(path.with_suffix(".json").read_text())["load"]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert line.startswith("import pipeline.models; timm.create_model(")
    statement, expression = line.split("; ", 1)
    namespace = {"timm": timm}
    exec(statement, namespace)
    loaded = eval(expression, namespace).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_the_same_weights_export_to_the_same_bytes(tmp_path):
    """safetensors orders the metadata as a hash map does (differently per call): two exports of
    one model differed. Reference: byte equality, and safetensors' own reader of the rewritten file."""
    from safetensors import safe_open

    model = timm.create_model("pyramidnet20_a48", num_classes=10)
    options = dict(model_name="pyramidnet20_a48", num_classes=10, classes=[f"c{i}" for i in range(10)],
                   preprocessing={"image_size": 32, "mean": [0.5] * 3})
    files = [export_weights(model, tmp_path / f"{i}" / "model.safetensors", **options).read_bytes() for i in range(4)]
    assert all(data == files[0] for data in files[1:])
    with safe_open(tmp_path / "0" / "model.safetensors", framework="pt") as opened:
        metadata = opened.metadata()
        assert metadata["model_name"] == "pyramidnet20_a48"
        assert json.loads(metadata["classes"]) == options["classes"] and metadata["num_classes"] == "10"
        for key, value in model.state_dict().items():
            assert torch.equal(opened.get_tensor(key), value)


@pytest.mark.parametrize("augmentation, size, crop_pct, image_wh", [
    # The CIFAR recipes: images evaluated as they are (crop_pct stays at its unread default 0.875;
    # written as such, timm zoomed in: Resize(36) then CenterCrop(32); review).
    ("cifar", 32, 0.875, (32, 32)),
    # ImageNet's kind: shorter side to 24 / 0.75 = 32 (60x48 to 40x32: no rounding), then the centre 24.
    ("imagenet", 24, 0.75, (60, 48)),
])
def test_timms_own_transform_from_the_load_line_prepares_images_as_the_evaluation(tmp_path, augmentation, size,
                                                                                   crop_pct, image_wh):
    """timm.data.resolve_data_config + create_transform for the model the load line builds, against
    the evaluation's preprocessing written out by hand with PIL: resize the shorter side (bilinear),
    centre crop, scale to [0, 1], normalize."""
    import numpy as np
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    preprocessing = {"image_size": size, "crop_pct": crop_pct, "augmentation": augmentation, "crop_padding": 4,
                     "mean": mean, "std": std, "channels_last": False}
    path = export_weights(timm.create_model("resnet10t", num_classes=10), tmp_path / "model.safetensors",
                          model_name="resnet10t", num_classes=10, preprocessing=preprocessing)
    model = eval(json.loads(path.with_suffix(".json").read_text())["load"], {"timm": timm})
    transform = create_transform(**resolve_data_config({}, model=model))
    pixels = np.random.default_rng(0).integers(0, 256, (image_wh[1], image_wh[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    # By hand: the shorter side to round(size / crop_pct) (1.0 for cifar: no resize), the centre crop.
    shorter = size if augmentation == "cifar" else round(size / crop_pct)
    width, height = image_wh
    scale = shorter / min(width, height)
    resized = image.resize((round(width * scale), round(height * scale)), Image.BILINEAR)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    crop = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float64) / 255
    expected = torch.from_numpy((crop - mean) / std).permute(2, 0, 1).float()
    torch.testing.assert_close(transform(image), expected, atol=1e-5, rtol=0)
