"""LPIPS (Zhang et al. 2018, v0.1) with the calibrated linear heads that ship inside the `lpips`
package, on a VGG16 or AlexNet trunk built here.

Why not `lpips.LPIPS` itself: it builds its trunk with torchvision, and the only torchvision
wheels for torch 2.13 are CUDA builds that do not import next to the CPU torch. The trunk is
two short lists of layers (torchvision's `features` indices, so torchvision's own weight files
load as they are); the heads are read from the lpips package's folder without importing it.

Open-Sora-Plan's training loss uses the VGG16 trunk (taming-transformers' copy of these heads);
its evaluation script uses AlexNet with `spatial=True` (each layer's map upsampled to the frame,
then averaged). Inputs are frames in [-1, 1]; the result is one distance per frame.
"""
from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...config.errors import ConfigError

# torchvision `features` layer lists: ("C", in, out, kernel, stride, padding), "R" ReLU, ("M", kernel, stride)
_VGG16 = [("C", 3, 64, 3, 1, 1), "R", ("C", 64, 64, 3, 1, 1), "R", ("M", 2, 2),
          ("C", 64, 128, 3, 1, 1), "R", ("C", 128, 128, 3, 1, 1), "R", ("M", 2, 2),
          ("C", 128, 256, 3, 1, 1), "R", ("C", 256, 256, 3, 1, 1), "R", ("C", 256, 256, 3, 1, 1), "R", ("M", 2, 2),
          ("C", 256, 512, 3, 1, 1), "R", ("C", 512, 512, 3, 1, 1), "R", ("C", 512, 512, 3, 1, 1), "R", ("M", 2, 2),
          ("C", 512, 512, 3, 1, 1), "R", ("C", 512, 512, 3, 1, 1), "R", ("C", 512, 512, 3, 1, 1), "R"]
_ALEXNET = [("C", 3, 64, 11, 4, 2), "R", ("M", 3, 2), ("C", 64, 192, 5, 1, 2), "R", ("M", 3, 2),
            ("C", 192, 384, 3, 1, 1), "R", ("C", 384, 256, 3, 1, 1), "R", ("C", 256, 256, 3, 1, 1), "R"]
# trunk: (layers, indices whose outputs the heads read (relu1_2 ... relu5_3 for VGG), channels there,
#         torchvision's weight file name in the torch hub cache)
TRUNKS = {
    "vgg": (_VGG16, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512), "vgg16-*.pth"),
    "alex": (_ALEXNET, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256), "alexnet-*.pth"),
}


def _layer(spec) -> nn.Module:
    if spec == "R":
        return nn.ReLU()
    if spec[0] == "M":
        return nn.MaxPool2d(spec[1], spec[2])
    _, cin, cout, k, s, p = spec
    return nn.Conv2d(cin, cout, k, stride=s, padding=p)


class LPIPS(nn.Module):
    def __init__(self, net: str = "vgg", spatial: bool = False):
        super().__init__()
        layers, self.taps, channels, _ = TRUNKS[net]
        self.net_name, self.spatial = net, spatial
        self.features = nn.Sequential(*[_layer(s) for s in layers])
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        # lpips' ScalingLayer: [-1, 1] images to the trunk's ImageNet normalisation
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # a fixed metric: no dropout, whatever the model around it does

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, a_nchw: torch.Tensor, b_nchw: torch.Tensor) -> torch.Tensor:
        """Distance per image: shape (N, 1, 1, 1), or (N, 1, H, W) with spatial."""
        fa = self._taps((a_nchw - self.shift) / self.scale)
        fb = self._taps((b_nchw - self.shift) / self.scale)
        total = 0
        for lin, xa, xb in zip(self.lins, fa, fb):
            # unit length along channels (eps as lpips' normalize_tensor), squared difference, head
            na = xa / (xa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = xb / (xb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = lin((na - nb).pow(2))
            if self.spatial:
                total = total + F.interpolate(d, size=a_nchw.shape[2:], mode="bilinear", align_corners=False)
            else:
                total = total + d.mean((2, 3), keepdim=True)
        return total


def lpips_heads_file(net: str) -> Path:
    """The calibrated v0.1 heads inside the installed `lpips` package (found without importing it)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("LPIPS needs the `lpips` package for its calibrated heads: pip install --no-deps lpips "
                          "(--no-deps: its torchvision requirement is not needed), or set perceptual_weight: 0")
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth"


def trunk_weights_file(net: str, path: str | None, key: str) -> Path:
    """`path` when given, else torchvision's download of the trunk in the torch hub cache."""
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"{key}: no file at {path} (expected torchvision's {TRUNKS[net][3]} ImageNet weights)")
        return Path(path)
    cache = os.path.join(torch.hub.get_dir(), "checkpoints", TRUNKS[net][3])
    found = sorted(glob.glob(cache))
    if not found:
        what = "perceptual_weight > 0 (the LPIPS term)" if key == "perceptual_weights" else "eval_lpips"
        fix = "set perceptual_weight: 0" if key == "perceptual_weights" else "set eval_lpips: false"
        raise ConfigError(f"{what} needs the {net} ImageNet weights and none were found at {cache}: put torchvision's "
                          f"file there, pass its path as {key}, or {fix}")
    return Path(found[-1])


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def build_lpips(net: str = "vgg", trunk_path: str | None = None, key: str = "perceptual_weights",
                spatial: bool = False, random_trunk_seed: int | None = None) -> LPIPS:
    """LPIPS with the package's heads and ImageNet trunk weights; `random_trunk_seed` gives a seeded
    random trunk instead (tests: no ImageNet weights exist on these machines)."""
    model = LPIPS(net, spatial)
    heads = _read(lpips_heads_file(net))
    model.lins.load_state_dict({f"{i}.weight": heads[f"lin{i}.model.1.weight"] for i in range(len(model.lins))})
    if random_trunk_seed is not None:
        generator = torch.Generator().manual_seed(random_trunk_seed)
        for p in model.features.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05) if p.dim() > 1 else p.zero_()
        return model
    file = trunk_weights_file(net, trunk_path, key)
    state = _read(file)
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    missing = sorted(set(model.features.state_dict()) - set(features))
    if missing:
        raise ConfigError(f"{key}: {file} is not torchvision's {net} weights (no features.{missing[0]} and "
                          f"{len(missing) - 1} more)")
    model.features.load_state_dict({k: features[k] for k in model.features.state_dict()})
    return model
