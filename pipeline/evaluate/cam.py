"""Class activation maps (Zhou et al., CVPR 2016) of timm-style CNNs whose head is global average
pooling + one linear layer: CAM_k = sum_c W[k, c] f_c, with f = ``forward_features``.

As clovaai/wsolevaluation computes them (``wsol/resnet.py``, ``ResNetCam.forward(return_cam=True)``)
but summed over channels where theirs averages: the 1/C factor goes away in the min-max
normalization of ``wsol.scoremaps``. No ReLU, as theirs.

Any other head (a ViT's tokens, a conv or MLP head, a norm after the pooling) has no CAM of this
kind and is refused: ``cam_classifier`` checks the structure once, ``check_head`` checks on the
first batch that the logits really are the pooled features times the classifier."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import EvalError

# Relative tolerance of the head check per precision, against the dot product's own error scale
# sum_c |W[k, c]| |pooled_c| + |b_k|: about 16 unit roundoffs of the matmul's precision. float32
# allows TF32 (10-bit mantissa), which CUDA matmuls may use. A wrong head misses by O(1).
HEAD_RTOL = {torch.float64: 1e-9, torch.float32: 1e-2, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def model_name(model: nn.Module) -> str:
    """timm's architecture name when the model has one, else its class name (for messages)."""
    config = getattr(model, "pretrained_cfg", None) or {}
    return config.get("architecture") or type(model).__name__


@torch.no_grad()
def cam_and_logits(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, K], features [B, C, h, w]) of one forward pass: ``forward_features`` then
    ``forward_head``, so the map the CAM weighs is the one the logits come from."""
    features = model.forward_features(inputs)
    return model.forward_head(features), features


def cam_classifier(model: nn.Module) -> torch.Tensor:
    """The classifier weight W [K, C] that CAMs weigh features with. Raises ``EvalError`` unless the
    model has timm's ``forward_features`` / ``forward_head`` and ``get_classifier()`` is one
    ``nn.Linear``; ``check_head`` completes the check on the first batch."""
    name = model_name(model)
    missing = [attr for attr in ("forward_features", "forward_head", "get_classifier") if not hasattr(model, attr)]
    if missing:
        raise EvalError(f"localize: {name} has no {', '.join(missing)}: CAM needs a timm-style model "
                        "(forward_features -> feature map, forward_head -> logits)")
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise EvalError(f"localize: {name}'s classifier is {type(classifier).__name__}, not one nn.Linear: "
                        "CAM needs global average pooling + one linear layer")
    return classifier.weight.detach()


@torch.no_grad()
def check_head(model: nn.Module, features: torch.Tensor, logits: torch.Tensor) -> None:
    """Raise ``EvalError`` unless ``features`` is a [B, C, h, w] map and ``logits`` equal
    ``features.mean((2, 3)) @ W.T + b`` within the precision of ``features`` / ``logits``. Reads the
    result on the host: call it once, on the first batch."""
    name = model_name(model)
    classifier = model.get_classifier()
    if features.ndim != 4:
        raise EvalError(f"localize: {name}'s forward_features gives shape {tuple(features.shape)}, not a "
                        "[B, C, h, w] feature map (tokens?): CAM needs a CNN with global average pooling")
    if features.shape[1] != classifier.in_features:
        raise EvalError(f"localize: {name}'s feature map has {features.shape[1]} channels but its classifier "
                        f"takes {classifier.in_features}: the head is more than pooling + one linear layer")
    precision = torch.float64 if features.dtype == torch.float64 else torch.float32
    weight = classifier.weight.detach().to(precision)
    bias = classifier.bias.detach().to(precision) if classifier.bias is not None else torch.zeros_like(weight[:, 0])
    pooled = features.to(precision).mean((2, 3))
    expected = pooled @ weight.T + bias
    scale = pooled.abs() @ weight.abs().T + bias.abs()
    rtol = max(HEAD_RTOL.get(features.dtype, 1e-2), HEAD_RTOL.get(logits.dtype, 1e-2))
    matches = logits.shape == expected.shape
    if matches:  # .item(): a host sync, once per run
        matches = ((logits.to(precision) - expected).abs() - rtol * scale).max().item() <= 1e-5
    if not matches:
        raise EvalError(f"localize: {name}'s logits are not global average pooling of forward_features + "
                        "get_classifier() (a conv, MLP or normalized head?): it has no class activation maps")


def class_activation_maps(features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """float32 [B, h, w]: sum_c weight[classes[b], c] * features[b, c] (no ReLU, as wsolevaluation).
    Negative classes (the loader's padding label -1) give the map of class 0: meaningless, to be
    dropped by the caller."""
    class_weights = weight[classes.clamp(min=0)].float()
    return torch.einsum("bchw,bc->bhw", features.float(), class_weights)
