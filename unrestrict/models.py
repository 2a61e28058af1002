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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import weights
from .contract import check_images
from .errors import ConfigError, WeightsUnavailableError
from .files import file_sha256
from .fusion import fold_batchnorm

__all__ = [
    "Preprocess",
    "ModelEntry",
    "Classifier",
    "Ensemble",
    "register_model",
    "get_model_entry",
    "list_models",
    "format_models",
    "create_classifier",
    "create_ensemble",
    "OFFLINE_MODELS",
    "STATUSES",
]

Interpolation = Literal["bilinear", "bicubic"]
Source = Literal["offline", "torchvision", "timm", "local"]

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
    # (status, where from) for verify=True/False; status is one of STATUSES.
    availability: Callable[[bool], tuple[str, str]]
    # The weights' identity, the same whatever name they are reached by: "sha256:<8 hex>"
    # where the file's digest is known (offline files, torchvision's hash-named files); else
    # "name:<name>", so that two entries without a known digest never count as the same.
    weights_id: str = ""

    def __post_init__(self) -> None:
        if not self.weights_id:
            object.__setattr__(self, "weights_id", f"name:{self.name}")


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


# What `unrestrict models` can say of a model's weights.
STATUSES = {
    "verified": "here, and the file's SHA-256 matches",
    "present": "here, not verified (no checksum is known for it)",
    "missing": "not here: installing or downloading it is needed",
    "corrupt": "here, but the file's SHA-256 does not match: reinstall or delete it",
}


def _offline_availability(key: str, verify: bool) -> tuple[str, str]:
    wf = weights.WEIGHT_FILES[key]
    try:
        path = weights.locate(key)
    except WeightsUnavailableError:
        return "missing", wf.install_hint
    where = f"{wf.distribution}=={wf.version}: {path.name}"
    if not verify:
        return "present", where
    return ("verified" if file_sha256(path) == wf.sha256 else "corrupt"), where


def _offline(name: str, key: str, pre: Preprocess, loader: Callable[[Path], nn.Module]) -> None:
    register_model(
        ModelEntry(
            name=name,
            source="offline",
            preprocess=pre,
            origin=weights.WEIGHT_FILES[key].distribution,
            build=lambda: loader(weights.resolve(key)),
            availability=partial(_offline_availability, key),
            weights_id=f"sha256:{weights.WEIGHT_FILES[key].sha256[:8]}",
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
    """``name`` or ``name.WEIGHTS`` (e.g. ``mobilenet_v2.IMAGENET1K_V1``; default: DEFAULT)."""
    import torchvision

    arch, _, tag = name.partition(".")
    try:
        enum = torchvision.models.get_model_weights(arch)
        w = enum[tag] if tag else enum.DEFAULT
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
    # torchvision names its files <name>-<first 8 hex of their sha256>.pth
    digest = re.search(r"-([0-9a-f]{8,})\.pth$", w.url)
    wid = f"sha256:{digest.group(1)[:8]}" if digest else f"url:{w.url}"

    def availability(verify: bool) -> tuple[str, str]:
        if not file.is_file():
            return "missing", f"download: {w.url}"
        if not verify or not wid.startswith("sha256:"):
            return "present", f"cached: {file}"
        ok = file_sha256(file).startswith(wid.removeprefix("sha256:"))
        return ("verified" if ok else "corrupt"), f"cached: {file}"

    def build() -> nn.Module:
        try:
            return torchvision.models.get_model(arch, weights=w).eval()
        except OSError as e:  # URLError is an OSError
            raise WeightsUnavailableError(
                f"torchvision {name!r} needs {w.url} and it could not be downloaded ({e}). "
                f"Copy the file to {file}, or use an offline model: {', '.join(OFFLINE_MODELS)}"
            ) from e

    return ModelEntry(f"torchvision:{name}", "torchvision", pre, w.url, build, availability, wid)


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

    def availability(verify: bool) -> tuple[str, str]:
        try:
            from huggingface_hub import try_to_load_from_cache

            for fname in ("model.safetensors", "pytorch_model.bin"):
                hit = try_to_load_from_cache(hub_id, fname) if hub_id else None
                if isinstance(hit, str):
                    return "present", f"cached: {hit}"
        except ImportError:
            pass
        return "missing", f"download: hf-hub:{hub_id}" if hub_id else f"download: {cfg.url}"

    def build() -> nn.Module:
        try:
            return timm.create_model(name, pretrained=True).eval()
        except Exception as e:  # hub errors come in many types; all mean "not here"
            raise WeightsUnavailableError(
                f"timm {name!r} needs a download from {hub_id or cfg.url} that failed ({e}). "
                f"Use an offline model instead: {', '.join(OFFLINE_MODELS)}"
            ) from e

    return ModelEntry(f"timm:{name}", "timm", pre, hub_id or str(cfg.url), build, availability,
                      f"hf:{hub_id}" if hub_id else f"url:{cfg.url}")


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
    status: str  # a key of STATUSES
    origin: str
    weights_id: str

    @property
    def available(self) -> bool:
        return self.status in ("verified", "present")


def list_models(include_all: bool = False, verify: bool = True) -> list[ModelInfo]:
    """Every offline model, the popular networked ones and, with ``include_all``, every
    torchvision classifier. Reads the file system only; ``verify`` checks the SHA-256 of
    every file whose digest is known (a second or so for the offline files)."""
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
        status, where = e.availability(verify)
        out.append(ModelInfo(e.name, e.source, e.preprocess.input_size, status, where,
                             e.weights_id))
    return out


def format_models(infos: list[ModelInfo]) -> str:
    """``list_models`` as an aligned text table."""
    width = max(len(i.name) for i in infos)
    lines = [f"{'name':<{width}}  {'source':<11}  size  {'weights':<8}  origin"]
    lines += [f"{i.name:<{width}}  {i.source:<11}  {i.input_size:>4}  {i.status:<8}  {i.origin}"
              for i in infos]
    return "\n".join(lines)


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
    same function with fewer passes over the activations (see benchmarks/step_overhead.py).
    """
    entry = get_model_entry(name)
    model = entry.build()
    if fold_bn:
        model = fold_batchnorm(model)
    clf = Classifier(model, entry.preprocess, entry.name)
    # channels_last weights let oneDNN/cuDNN pick their fast convolution kernels; inputs may
    # stay NCHW.
    clf = clf.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    return clf.eval().requires_grad_(False)


def create_ensemble(
    names: Sequence[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    fold_bn: bool = True,
) -> Ensemble:
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate model names in {list(names)}")
    return Ensemble([create_classifier(n, device, dtype, fold_bn) for n in names])
