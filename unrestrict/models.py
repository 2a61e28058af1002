"""Classifier registry: a name maps to a builder plus the preprocessing the weights expect.

Three sources share one registry:

* ``offline`` -- real ImageNet weights inside registry packages (:mod:`unrestrict.weights`);
  the default everywhere, they never touch the network.
* ``torchvision`` -- any ``torchvision.models`` classification model with its DEFAULT weights.
* ``timm`` -- any timm model name with pretrained weights.

Networked models are only looked at when named; building one uses the local torch/HF cache and
downloads only if the file is not there. Names can be prefixed (``torchvision:resnet50``,
``timm:inception_v3.tf_adv_in1k``) to pick the source explicitly.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import weights
from .errors import WeightsUnavailableError
from .fusion import fold_batchnorm
from .utils import check_images

__all__ = [
    "Preprocess",
    "ModelEntry",
    "Classifier",
    "Ensemble",
    "register_model",
    "get_model_entry",
    "list_models",
    "create_classifier",
    "create_ensemble",
    "OFFLINE_MODELS",
]

Interpolation = Literal["bilinear", "bicubic"]
Source = Literal["offline", "torchvision", "timm"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """What a classifier's weights expect; applied inside :class:`Classifier`.

    The whole image is resized to ``input_size`` (no centre crop): contest images are framed
    500x500 photos and the contest's evaluators saw the full frame.
    """

    input_size: int
    interpolation: Interpolation = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: Source
    preprocess: Preprocess
    origin: str
    build: Callable[[], nn.Module]  # weights loaded, eval mode, on CPU
    availability: Callable[[], tuple[bool, str]]  # (usable now without network, where from)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def _offline_availability(key: str) -> tuple[bool, str]:
    wf = weights.WEIGHT_FILES[key]
    try:
        path = weights.locate(key)
    except WeightsUnavailableError:
        return False, f"missing: {wf.install_hint}"
    return True, f"{wf.distribution}=={wf.version}: {path.name}"


def _offline(name: str, key: str, pre: Preprocess, loader: Callable[[Path], nn.Module]) -> None:
    register_model(
        ModelEntry(
            name=name,
            source="offline",
            preprocess=pre,
            origin=weights.WEIGHT_FILES[key].distribution,
            build=lambda: loader(weights.resolve(key)),
            availability=partial(_offline_availability, key),
        )
    )


_HALF = (0.5, 0.5, 0.5)  # the TF EfficientNet-Lite ports take x*2-1
_offline(
    "efficientnet_lite0",
    "efficientnet_lite0",
    Preprocess(224, "bicubic", _HALF, _HALF),
    partial(weights.load_efficientnet_lite, 0),
)
_offline(
    "efficientnet_lite1",
    "efficientnet_lite1",
    Preprocess(240, "bicubic", _HALF, _HALF),
    partial(weights.load_efficientnet_lite, 1),
)
_offline(
    "efficientnet_lite2",
    "efficientnet_lite2",
    Preprocess(260, "bicubic", _HALF, _HALF),
    partial(weights.load_efficientnet_lite, 2),
)
_offline("mobilenet_v2", "mobilenet_v2", Preprocess(224, "bilinear"), weights.load_mobilenet_v2)

OFFLINE_MODELS: tuple[str, ...] = tuple(n for n, e in _REGISTRY.items() if e.source == "offline")

# Shown by `unrestrict models` besides the offline ones: architectures the contest's teams
# attacked or evaluated with. Any other torchvision/timm name works too.
POPULAR_NETWORKED: tuple[str, ...] = (
    "torchvision:resnet50",
    "torchvision:resnet152",
    "torchvision:inception_v3",
    "torchvision:vgg16",
    "torchvision:densenet121",
    "torchvision:wide_resnet50_2",
    "torchvision:convnext_tiny",
    "torchvision:swin_t",
    "torchvision:vit_b_16",
    "timm:inception_v3.tf_adv_in1k",
    "timm:inception_resnet_v2.tf_ens_adv_in1k",
)


def _torchvision_entry(name: str) -> ModelEntry:
    import torchvision

    try:
        w = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise WeightsUnavailableError(
            f"torchvision has no pretrained classifier {name!r}"
        ) from None
    if w.meta.get("num_classes", len(w.meta.get("categories", []))) != 1000:
        raise WeightsUnavailableError(f"torchvision {name!r} is not an ImageNet-1k classifier")
    t = w.transforms()
    interp = "bicubic" if "BICUBIC" in str(t.interpolation).upper() else "bilinear"
    pre = Preprocess(int(t.crop_size[0]), interp, tuple(t.mean), tuple(t.std))  # type: ignore[arg-type]
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)

    def availability() -> tuple[bool, str]:
        return (True, f"cached: {file}") if file.is_file() else (False, f"download: {w.url}")

    def build() -> nn.Module:
        try:
            return torchvision.models.get_model(name, weights=w).eval()
        except OSError as e:  # URLError is an OSError
            raise WeightsUnavailableError(
                f"torchvision {name!r} needs {w.url} and it could not be downloaded ({e}). "
                f"Copy the file to {file}, or use an offline model: {', '.join(OFFLINE_MODELS)}"
            ) from e

    return ModelEntry(f"torchvision:{name}", "torchvision", pre, w.url, build, availability)


def _timm_entry(name: str) -> ModelEntry:
    import timm

    if not timm.is_model(name):
        raise WeightsUnavailableError(f"timm has no model {name!r}")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or cfg.num_classes != 1000:
        raise WeightsUnavailableError(f"timm {name!r} has no ImageNet-1k pretrained weights")
    interp = "bicubic" if cfg.interpolation == "bicubic" else "bilinear"
    pre = Preprocess(int(cfg.input_size[-1]), interp, tuple(cfg.mean), tuple(cfg.std))  # type: ignore[arg-type]
    hub_id = cfg.hf_hub_id or ""

    def availability() -> tuple[bool, str]:
        try:
            from huggingface_hub import try_to_load_from_cache

            for fname in ("model.safetensors", "pytorch_model.bin"):
                hit = try_to_load_from_cache(hub_id, fname) if hub_id else None
                if isinstance(hit, str):
                    return True, f"cached: {hit}"
        except ImportError:
            pass
        return False, f"download: hf-hub:{hub_id}" if hub_id else f"download: {cfg.url}"

    def build() -> nn.Module:
        try:
            return timm.create_model(name, pretrained=True).eval()
        except Exception as e:  # hub errors come in many types; all mean "not here"
            raise WeightsUnavailableError(
                f"timm {name!r} needs a download from {hub_id or cfg.url} that failed ({e}). "
                f"Use an offline model instead: {', '.join(OFFLINE_MODELS)}"
            ) from e

    return ModelEntry(f"timm:{name}", "timm", pre, hub_id or str(cfg.url), build, availability)


def get_model_entry(name: str) -> ModelEntry:
    """Resolve a model name to its registry entry; no weights are loaded.

    Raises:
        WeightsUnavailableError: unknown name (with close matches when there are any).
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    source, _, bare = name.partition(":")
    if bare:
        if source == "torchvision":
            return _torchvision_entry(bare)
        if source == "timm":
            return _timm_entry(bare)
        raise WeightsUnavailableError(f"unknown model source {source!r} in {name!r}")
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return _torchvision_entry(name)
    import timm

    if timm.is_model(name):
        return _timm_entry(name)
    close = difflib.get_close_matches(name, list(_REGISTRY) + list(POPULAR_NETWORKED), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise WeightsUnavailableError(
        f"unknown model {name!r}.{hint} See `unrestrict models` for the list."
    )


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: Source
    input_size: int
    available: bool
    origin: str


def list_models(include_all: bool = False) -> list[ModelInfo]:
    """Every offline model, the popular networked ones and, with ``include_all``, every
    torchvision classifier. Checking availability reads the file system only."""
    names = list(_REGISTRY) + list(POPULAR_NETWORKED)
    if include_all:
        import torchvision

        names += [
            f"torchvision:{n}"
            for n in torchvision.models.list_models(module=torchvision.models)
            if f"torchvision:{n}" not in names
        ]
    out = []
    for n in names:
        try:
            e = get_model_entry(n)
        except WeightsUnavailableError:
            continue
        ok, where = e.availability()
        out.append(ModelInfo(e.name, e.source, e.preprocess.input_size, ok, where))
    return out


class Classifier(nn.Module):
    """A classifier that takes (B, 3, H, W) images in [0, 1] at any size.

    Resizing (antialiased, like PIL) and mean/std normalisation live here, in buffers, so attack
    code never needs to know which model it is talking to.
    """

    def __init__(self, model: nn.Module, preprocess: Preprocess, name: str = "") -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.name = name
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, 3, H, W) in [0, 1] -> logits (B, 1000)."""
        check_images(x)
        size = self.preprocess.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(
                x, size=(size, size), mode=self.preprocess.interpolation,
                align_corners=False, antialias=True,
            )
        return self.model((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, preprocess={self.preprocess}"


class Ensemble(nn.Module):
    """Averages the logits of several classifiers."""

    def __init__(self, members: Sequence[Classifier]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one classifier")
        self.members = nn.ModuleList(members)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def max_input_size(self) -> int:
        return max(m.preprocess.input_size for m in self.members)

    def to_input_size(self, x: Tensor) -> Tensor:
        """Resize ``x`` to the largest member's input, as that member's preprocessing would.

        That member then sees exactly what its own forward pass would give it, and the others
        resize from there. Attacks use it to put input diversity on the models' input rather
        than on a 500x500 image: the same transform on a fifth of the pixels.
        """
        big = max(self.members, key=lambda m: m.preprocess.input_size)
        size = big.preprocess.input_size
        if x.shape[-2:] == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode=big.preprocess.interpolation,
                             align_corners=False, antialias=True)

    def logits_each(self, x: Tensor) -> Tensor:
        """Shape: (B, 3, H, W) -> (M, B, 1000), one slice per member."""
        return torch.stack([m(x) for m in self.members])

    def forward(self, x: Tensor) -> Tensor:
        return self.logits_each(x).mean(0)


def create_classifier(
    name: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    fold_bn: bool = True,
) -> Classifier:
    """Build a registered classifier with its weights, in eval mode, frozen.

    ``fold_bn``: fold BatchNorm into the convolutions before it (:func:`fold_batchnorm`): the
    same function, with the attack ensemble's forward+backward on the CPU about 20% faster.
    """
    entry = get_model_entry(name)
    model = entry.build()
    if fold_bn:
        model = fold_batchnorm(model)
    clf = Classifier(model, entry.preprocess, entry.name)
    # channels_last weights let oneDNN/cuDNN pick their fast convolution kernels; inputs may
    # stay NCHW. On the 2-core CPU an attack step through efficientnet_lite0 + mobilenet_v2
    # (batch 16, forward + backward) went from 768 to about 600 ms.
    clf = clf.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    return clf.eval().requires_grad_(False)


def create_ensemble(
    names: Sequence[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    fold_bn: bool = True,
) -> Ensemble:
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate model names in {list(names)}")
    return Ensemble([create_classifier(n, device, dtype, fold_bn) for n in names])
