"""Feature-level mixing: Feature CutMix (the CutMix paper's Table 3) and Manifold Mixup (Verma et
al. 2019) cut or blend the output of a model layer instead of the image.

Forward hooks on the candidate layers (registered once, no model copy) replace the chosen layer's
output for the step under ``FeatureMixer.mixing(layer, resolved)``: the same partner permutation
and soft targets as image CutMix, with the box on that layer's grid and lambda from the box's area
there (``resolve_mix`` on the layer's height and width). Any timm model works: layers are named by
the modules of its ``feature_info`` (for ResNets ``layer1`` .. ``layer4``).

    mixer = FeatureMixer(model, layers=["layer1", "layer2"])
    shapes = layer_shapes(model, ["layer1", "layer2"], image_size=224)     # {name: (h, w)}
    resolved = resolve_mix(params, batch_size=B, height=h, width=w)
    with mixer.mixing(params.layer, resolved):
        logits = model(inputs)
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from torch import Tensor

from .rows import BOX_COLUMNS, MODE_CODES, ResolvedMix, device_lam, device_partner
from .sampler import INPUT_LAYER


def layer_names(model: torch.nn.Module, *, image_size: int) -> list[str]:
    """The layers a feature-level mode can mix at: "input" (the image) and the modules of the
    model's ``feature_info`` (timm's description of its stages) whose output is a feature map
    [B, C, H, W] with C its ``num_chs`` (a ViT's tokens or a Swin's channels-last maps are not)."""
    return list(_feature_maps(model, image_size=image_size))


def _feature_maps(model: torch.nn.Module, *, image_size: int) -> dict[str, tuple[int, int]]:
    """(height, width) of each of ``layer_names``, from one forward."""
    # Some models' feature_info names modules they do not have (hrnet's 'stem', twins' and mvitv2's
    # 'block'): not layers to hook (a traceback at --check; walkthrough).
    modules = dict(model.named_modules())
    info = [entry for entry in (getattr(model, "feature_info", None) or [])
            if isinstance(entry, dict) and entry.get("module") in modules]
    outputs = _layer_outputs(model, [entry["module"] for entry in info], image_size=image_size)
    maps = {INPUT_LAYER: (image_size, image_size)}
    for entry in info:
        shape = outputs[entry["module"]]
        if len(shape) == 4 and shape[1] == entry["num_chs"]:
            maps[entry["module"]] = tuple(shape[2:])
    return maps


def model_layer_names(model_name: str, *, image_size: int) -> list[str]:
    """``layer_names`` of the timm model ``model_name``, built and run on the meta device (no
    memory, no weights, no arithmetic: a config can be checked before anything is built)."""
    return list(model_layer_shapes(model_name, image_size=image_size))


def model_layer_shapes(model_name: str, *, image_size: int) -> dict[str, tuple[int, int]]:
    """(height, width) of each of ``layer_names`` of the timm model ``model_name``, in their order,
    from one forward on the meta device as ``model_layer_names``."""
    return dict(_meta_layer_shapes(model_name, image_size))


@functools.lru_cache(maxsize=8)  # two config rules ask, and a model takes up to a second to build
def _meta_layer_shapes(model_name: str, image_size: int) -> tuple[tuple[str, tuple[int, int]], ...]:
    import timm

    import pipeline.models  # noqa: F401 - registers our models with timm

    with torch.device("meta"):
        return tuple(_feature_maps(timm.create_model(model_name, pretrained=False), image_size=image_size).items())


def layer_shapes(model: torch.nn.Module, layers, *, image_size: int) -> dict[str, tuple[int, int]]:
    """(height, width) of each layer's output for ``image_size`` images ("input": the image)."""
    outputs = _layer_outputs(model, [name for name in layers if name != INPUT_LAYER], image_size=image_size)
    for name, shape in outputs.items():
        if len(shape) != 4:
            raise ValueError(f"layer {name!r} puts out {list(shape)}, not a feature map [B, C, H, W]")
    return {name: (image_size, image_size) if name == INPUT_LAYER else tuple(outputs[name][2:]) for name in layers}


@torch.no_grad()
def _layer_outputs(model: torch.nn.Module, names, *, image_size: int) -> dict[str, tuple[int, ...]]:
    """The output shape of each named module for one zero image: a forward in eval mode (BatchNorm
    statistics untouched), hooks recording the shapes."""
    shapes, handles = {}, []
    for name in names:
        def record(module, args, output, name=name):
            shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else ()

        handles.append(model.get_submodule(name).register_forward_hook(record))
    training = model.training
    parameter = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros(1, 3, image_size, image_size, dtype=parameter.dtype, device=parameter.device))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return {name: shapes.get(name, ()) for name in names}


def mix_features(features: Tensor, resolved: ResolvedMix, *, out_dtype: torch.dtype | None = None) -> Tensor:
    """A layer's output [B, C, H, W] mixed as ``resolved`` says (one mode for the batch): CutMix
    pastes the partner's box, Mixup blends with the partner, none passes through. Differentiable
    with respect to ``features`` (own and partner's). ``out_dtype``: the result cast to it (Cutout +
    Mixup blends float32 images and rounds once; None: the features' own).

    Eager: lambda and the box are read from the host rows (no device read), which takes the fewest
    launches (Cutout + Mixup runs this on every image batch; issue 11 counts the host's time per
    step). Under torch.compile the hooks use ``mix_rows`` instead, which reads nothing on the host."""
    mode = batch_mode(resolved)
    out_dtype = out_dtype or features.dtype
    if mode == MODE_CODES["none"]:
        return features.to(out_dtype)
    partners = features.index_select(0, device_partner(resolved.on_device(features.device)))
    if mode == MODE_CODES["mixup"]:
        lam = float(resolved.lam[0])  # a host tensor: no device sync
        return (features * lam + partners * (1.0 - lam)).to(out_dtype)
    y1, y2, x1, x2 = resolved.uniform_box(np.ones(len(resolved.codes), dtype=bool))
    mixed = features.clone()
    mixed[:, :, y1:y2, x1:x2] = partners[:, :, y1:y2, x1:x2]
    return mixed.to(out_dtype)


def batch_mode(resolved: ResolvedMix) -> int:
    """The one mode code of a feature-level batch (none, cutmix or mixup); ValueError otherwise."""
    codes = resolved.codes
    if not (codes == codes[0]).all():
        raise ValueError("feature-level mixing takes one mode per batch (per='batch')")
    mode = int(codes[0])
    if mode not in (MODE_CODES["none"], MODE_CODES["cutmix"], MODE_CODES["mixup"]):
        raise ValueError(f"feature-level mixing does CutMix or Mixup, not mode code {mode}")
    return mode


def mix_rows(features: Tensor, *, mode: int, rows: Tensor) -> Tensor:
    """`mix_features` from the packed rows (int32 [B, ROW_COLUMNS], already on the features'
    device) and the batch's mode code, in tensor operations only: under torch.compile the box,
    lambda and partner of each batch are graph inputs, so a compiled model with the hooks keeps one
    graph per (layer, mode) instead of one per batch (eager, this would be ~10 launches where
    `mix_features` makes 3-4).

    CutMix selects (no arithmetic: the pasted values are the partner's exactly). Mixup computes in
    float32 (float64 for float64 features) and rounds once to the features' dtype; its weights are
    lambda and 1 - lambda in that precision (for float32 features, `mix_features`' result)."""
    if mode == MODE_CODES["none"]:
        return features
    partners = features.index_select(0, device_partner(rows))
    if mode == MODE_CODES["mixup"]:
        compute = torch.promote_types(features.dtype, torch.float32)
        lam = device_lam(rows)[0].to(compute)  # one lambda for the batch, a 0-d device tensor
        return (features.to(compute) * lam + partners.to(compute) * (1 - lam)).to(features.dtype)
    box = rows[0, BOX_COLUMNS]  # one box for the batch: y1, y2, x1, x2 as 0-d device tensors
    height, width = features.shape[-2:]
    ys = torch.arange(height, device=features.device)[:, None]
    xs = torch.arange(width, device=features.device)
    inside = (ys >= box[0]) & (ys < box[1]) & (xs >= box[2]) & (xs < box[3])  # [H, W]
    return torch.where(inside, partners, features)


class FeatureMixer:
    """Hooks on ``layers`` of ``model`` (registered once; "input" needs none) that mix the active
    layer's output during ``mixing`` and leave every other forward untouched.

    What a hook reads is a tuple (layer, mode code, rows on the device, the ResolvedMix), set before
    the forward. Traced by torch.compile, it mixes with `mix_rows`: dynamo guards on the layer's name
    and the mode and takes the rows as an input, so a compiled model compiles once per (layer, mode)
    drawn (a sampler's mode is fixed: a graph per layer, plus the unmixed one), not once per batch.
    Eager, it mixes with `mix_features` (fewer launches)."""

    def __init__(self, model: torch.nn.Module, layers) -> None:
        self._model = model
        self._active: tuple[str, int, Tensor, ResolvedMix] | None = None
        self._handles = [model.get_submodule(name).register_forward_hook(self._hook(name))
                         for name in dict.fromkeys(layers) if name != INPUT_LAYER]

    @contextlib.contextmanager
    def mixing(self, layer: str, resolved: ResolvedMix):
        """Mix the output of ``layer`` in the forward passes inside this block."""
        mode = batch_mode(resolved)
        if mode != MODE_CODES["none"]:  # an unmixed batch (the prob gate) runs the unhooked forward
            device = next(self._model.parameters()).device
            self._active = (layer, mode, resolved.on_device(device), resolved)
        try:
            yield
        finally:
            self._active = None

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str):
        def hook(module, args, output):
            active = self._active
            if active is None or active[0] != name:
                return None  # the output unchanged
            if torch.compiler.is_compiling():
                return mix_rows(output, mode=active[1], rows=active[2])
            return mix_features(output, active[3])
        return hook
