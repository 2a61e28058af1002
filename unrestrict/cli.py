"""Command line: a thin click layer over the library. No tensor code lives here.

Each command parses its options, builds the typed config of the library call, runs it, and
turns the library's :class:`~unrestrict.errors.UnrestrictError` into a one-line error.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .errors import UnrestrictError, ValidationError

F = TypeVar("F", bound=Callable[..., Any])


def _reports_errors(f: F) -> F:
    """Turn library errors into click errors: a clear message and exit status 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ValidationError as e:
            msg = str(e) + "".join(f"\n  - {p}" for p in e.problems)
            raise click.ClickException(msg) from e
        except UnrestrictError as e:
            raise click.ClickException(str(e)) from e
        except ValueError as e:  # config validation
            raise click.UsageError(str(e)) from e

    return wrapper  # type: ignore[return-value]


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("unrestrict: %(levelname)s: %(message)s"))
    log = logging.getLogger("unrestrict")
    log.handlers[:] = [handler]
    log.setLevel(logging.ERROR if quiet else logging.INFO)
    log.propagate = False


def _pick_device(name: str) -> Any:
    """The one place that decides "CUDA if available"; under torchrun, LOCAL_RANK's GPU."""
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _csv_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


# -- shared options ------------------------------------------------------------------------

def device_option(f: F) -> F:
    return click.option(
        "--device", default="auto", show_default=True,
        help="cpu, cuda, cuda:N, or auto (CUDA if available; under torchrun, GPU LOCAL_RANK).",
    )(f)


def batch_options(f: F) -> F:
    f = click.option("--num-workers", type=click.IntRange(0), default=2, show_default=True,
                     help="Image-decoding worker processes.")(f)
    f = click.option("--batch-size", "-b", type=click.IntRange(1), default=None,
                     help="Images per batch [default: 8 for generate, 16 for score].")(f)
    return f


def quiet_option(f: F) -> F:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar, errors only.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="unrestrict")
def cli() -> None:
    """Natural unrestricted adversarial examples for ImageNet classifiers, scored like the
    CVPR 2021 Security AI Challenger (Track 2: ImageNet Unrestricted Adversarial Attacks).

    \b
    The input is the contest layout: a folder with images/*.jpg and dev.csv
    (header ImageId,TrueLabel; 0-based ImageNet labels). A bundled sample set is in
    data/sample. A typical session:

    \b
        unrestrict models                          # what can run offline
        unrestrict generate data/sample out/       # attack (colour, style, geometry)
        unrestrict score data/sample out/          # ASR, FID, LPIPS, combined score
        unrestrict pack out/ --input data/sample -o images.zip
    """


# -- models --------------------------------------------------------------------------------

@cli.command("models")
@click.option("--all", "include_all", is_flag=True,
              help="Also list every torchvision ImageNet classifier.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_reports_errors
def models_cmd(include_all: bool, as_json: bool) -> None:
    """List classifiers: input size, whether their weights are here now, and their origin.

    \b
    offline      real ImageNet weights shipped in registry packages (no network, ever)
    torchvision  any torchvision classifier, e.g. torchvision:resnet50 (cache or download)
    timm         any timm model, e.g. timm:inception_v3.tf_adv_in1k (cache or download)

    Bare torchvision/timm names work too; offline names take precedence.
    """
    from .models import list_models

    infos = list_models(include_all)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return
    width = max(len(i.name) for i in infos)
    click.echo(f"{'name':<{width}}  {'source':<11}  size  ready  origin")
    for i in infos:
        ready = "yes" if i.available else "no"
        click.echo(f"{i.name:<{width}}  {i.source:<11}  {i.input_size:>4}  {ready:<5}  {i.origin}")


def main() -> None:
    cli(prog_name="unrestrict")


if __name__ == "__main__":
    main()
