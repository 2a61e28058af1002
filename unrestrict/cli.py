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
from .attack import FAILURE_POLICIES, PRESET_HELP, PRESETS
from .augment import AUGMENTATIONS
from .errors import UnrestrictError, ValidationError
from .perturb import FAMILY_ORDER

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


def _csv_list(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, ...] | None:
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
        unrestrict generate data/sample out/       # attack (natural colour and style)
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


# -- generate ------------------------------------------------------------------------------

def _parse_set(values: tuple[str, ...]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for v in values:
        key, eq, val = v.partition("=")
        fam, dot, name = key.partition(".")
        if not eq or not dot or not fam or not name:
            raise click.BadParameter(f"expected FAMILY.OPTION=VALUE, got {v!r}", param_hint="--set")
        out.setdefault(fam.strip(), {})[name.strip()] = val.strip()
    return out


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        i, n = (int(p) for p in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N such as 0/4, got {value!r}",
                                 param_hint="--shard") from None
    if not 0 <= i < n:
        raise click.BadParameter(f"need 0 <= I < N, got {value!r}", param_hint="--shard")
    return i, n


@cli.command("generate")
@click.argument("input_dir", type=click.Path(path_type=Path, file_okay=False))
@click.argument("output_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--preset", type=click.Choice(list(PRESETS)), default="natural",
              show_default=True,
              help="; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()) + ".")
@click.option("--family", callback=_csv_list, default=None, metavar="LIST",
              help="Comma-separated families from " + ", ".join(FAMILY_ORDER) + " (applied in "
                   "that order; see README) [default: the preset's: "
                   + " or ".join(",".join(p.families) for p in PRESETS.values()) + "].")
@click.option("--models", callback=_csv_list, default=None, metavar="LIST",
              help="Attack ensemble (logits averaged) [default: efficientnet_lite0,mobilenet_v2].")
@click.option("--val-models", callback=_csv_list, default=None, metavar="LIST",
              help="Held-out models for the per-image budget check; '' to judge with the "
                   "attack ensemble [default: efficientnet_lite1].")
@click.option("--stages", type=click.IntRange(1), default=None,
              help="Budget levels 1/S..1; an image stops once it fools the validation models.")
@click.option("--steps", type=click.IntRange(0), default=None, help="Optimisation steps per stage.")
@click.option("--step-size", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Step as a fraction of each parameter's bound [default: 2.5/steps].")
@click.option("--momentum", type=float, default=None,
              help="MI-FGSM momentum (decay) [default: 1.0].")
@click.option("--loss", type=click.Choice(["margin", "ce"]), default=None,
              help="CW margin or cross-entropy.")
@click.option("--kappa", type=float, default=None, help="Cap on the margin loss.")
@click.option("--copies", type=click.IntRange(1), default=None,
              help="Augmented copies per step, losses averaged (each is one more forward+backward "
                   "pass of the attack models).")
@click.option("--augment", callback=_csv_list, default=None, metavar="LIST",
              help="Augmentations each copy applies in order, from "
                   + ", ".join(AUGMENTATIONS) + " (see README) [default: di].")
@click.option("--di-prob", type=click.FloatRange(0, 1), default=None,
              help="Input diversity: probability of a random resize-and-pad at each step "
                   "(one draw for the whole batch).")
@click.option("--blur-sigma", type=click.FloatRange(0), default=None,
              help="TI: Gaussian blur (sigma, working pixels) in the forward graph; 0 = off.")
@click.option("--reg-weight", type=click.FloatRange(0), default=None,
              help="Weight of the families' smoothness/size penalties.")
@click.option("--lpips-weight", type=click.FloatRange(0), default=None,
              help="Weight of an LPIPS-to-original penalty (costs an AlexNet pass per step).")
@click.option("--work-size", type=click.IntRange(0), default=None,
              help="Side length to optimise at (0 = full size) [default: largest model input].")
@click.option("--val-margin", type=float, default=None,
              help="Logit margin by which every validation model must be fooled.")
@click.option("--refine", type=click.IntRange(0), default=None,
              help="Bisection steps that shrink a successful image towards the original.")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=None,
              help="Output JPEG quality; success is judged on the decoded bytes [default: 95].")
@click.option("--on-failure", type=click.Choice(list(FAILURE_POLICIES)), default=None,
              help="What an image that never fools the validation models gets: "
                   + "; ".join(f"{k}: {v}" for k, v in FAILURE_POLICIES.items())
                   + " [default: strongest].")
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Shorthand for --set pixel.eps=EPS/255 (L-inf bound in 0-255 units).")
@click.option("--set", "set_", multiple=True, metavar="FAMILY.OPTION=VALUE",
              help="Override a family option, e.g. --set geometry.rotation=2 (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds input diversity; CPU runs with one seed are byte-identical.")
@click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), default="none",
              show_default=True, help="Mixed precision for model passes (GPU).")
@click.option("--shard", default=None, metavar="I/N",
              help="Process rows I, I+N, I+2N, ... (torchrun sets this from RANK/WORLD_SIZE).")
@click.option("--skip-bad", is_flag=True,
              help="Leave unreadable rows out (listed at the end) instead of stopping.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Only the first N rows of dev.csv.")
@click.option("--save-params/--no-save-params", default=None,
              help="Save per-image parameters under OUTPUT_DIR/.unrestrict/params "
                   "[default: yes, except with the per-pixel family].")
@batch_options
@device_option
@quiet_option
@_reports_errors
def generate_cmd(input_dir: Path, output_dir: Path, preset: str, **opts: Any) -> None:
    """Write an adversarial JPEG for every row of INPUT_DIR/dev.csv into OUTPUT_DIR.

    Outputs keep the input's file names and sizes. Rerunning the same command resumes: images
    already written and logged are skipped, so a killed run loses nothing. Run metadata (the
    resolved config, seed, a JSONL log per rank, per-image parameters) is written to
    OUTPUT_DIR/.unrestrict/.

    \b
    Examples:
      unrestrict generate data/sample out/
      unrestrict generate data/sample out/ --family color --stages 3 --steps 20
      unrestrict generate data/sample base/ --preset baseline
      unrestrict generate dev/ out/ --models torchvision:resnet50,efficientnet_lite0 \\
          --val-models efficientnet_lite1 --amp bf16 -b 32
      torchrun --nproc-per-node 8 -m unrestrict generate dev/ out/   # 8 GPUs, 8 shards
    """
    from .generate import GenerateConfig, generate, shard_from_env

    _setup_logging(opts["quiet"])
    base = PRESETS[preset]
    family_options = _parse_set(opts["set_"])
    if opts["eps"] is not None:
        family_options.setdefault("pixel", {})["eps"] = str(opts["eps"] / 255)
    overrides = {
        k: opts[k]
        for k in ("stages", "steps", "step_size", "momentum", "loss", "kappa", "di_prob",
                  "blur_sigma", "reg_weight", "lpips_weight", "work_size", "val_margin",
                  "refine", "jpeg_quality", "on_failure", "copies", "augment")
        if opts[k] is not None
    }
    if opts["family"] is not None:
        overrides["families"] = opts["family"]
        if "pixel" in opts["family"] and opts["work_size"] is None:
            overrides["work_size"] = 0
    if family_options:
        overrides["family_options"] = family_options
    attack = dataclasses.replace(base, **overrides)
    # Check family names and options now, not after the models have loaded.
    from .perturb import compose

    compose(attack.families, attack.family_options)

    cfg_kwargs: dict[str, Any] = {
        "attack": attack, "seed": opts["seed"], "amp": opts["amp"], "skip_bad": opts["skip_bad"],
        "save_params": opts["save_params"], "limit": opts["limit"],
        "num_workers": opts["num_workers"],
    }
    if opts["batch_size"] is not None:
        cfg_kwargs["batch_size"] = opts["batch_size"]
    if opts["models"] is not None:
        cfg_kwargs["models"] = opts["models"]
    if opts["val_models"] is not None:
        cfg_kwargs["val_models"] = opts["val_models"]
    cfg = GenerateConfig(**cfg_kwargs)

    rank, world = _parse_shard(opts["shard"]) or shard_from_env()
    device = _pick_device(opts["device"])
    s = generate(input_dir, output_dir, cfg, device=device, rank=rank, world=world,
                 progress=not opts["quiet"])
    shard = f" (shard {rank}/{world})" if world > 1 else ""
    val = (f"fooled validation models {s.val_success}/{s.written}, " if cfg.val_models
           else "no validation models, ")
    click.echo(
        f"{output_dir}{shard}: {s.written} written, {s.already_done} already done, "
        f"{len(s.skipped)} skipped of {s.total}; {val}"
        f"attack ensemble {s.ensemble_success}/{s.written}; {s.seconds:.1f}s"
    )
    if s.skipped:
        click.echo("skipped rows:", err=True)
        for p in s.skipped:
            click.echo(f"  - {p}", err=True)


# -- score ---------------------------------------------------------------------------------

@cli.command("score")
@click.argument("input_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("results", type=click.Path(path_type=Path, exists=True))
@click.option("--eval-models", callback=_csv_list, default=None, metavar="LIST",
              help="Classifiers to attack-test on [default: offline models the generate run "
                   "did not use, read from RESULTS/.unrestrict or --run-dir].")
@click.option("--run-dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              default=None, help="The generate output folder, when RESULTS is a zip.")
@click.option("--lpips-net", callback=_csv_list, default="alex", show_default=True,
              metavar="LIST",
              help="LPIPS backbones to report, from alex, vgg (v0.1 linear heads), e.g. "
                   "alex,vgg; the first is the one the combined score uses.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="Write the summary (asr, fid, lpips, score, ...) as JSON.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="Write per-image predictions, success and LPIPS as CSV.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="Write an HTML report with a PNG contact sheet to this folder.")
@click.option("--partial", is_flag=True,
              help="Score the results present instead of refusing when some are missing.")
@click.option("--fid-cap", type=click.FloatRange(min=0, min_open=True), default=200.0,
              show_default=True, help="FID at which the FID factor reaches 0.")
@click.option("--lpips-low", type=click.FloatRange(0), default=0.2, show_default=True,
              help="LPIPS up to which the LPIPS factor stays 1.")
@click.option("--lpips-high", type=click.FloatRange(0), default=0.7, show_default=True,
              help="LPIPS at which the LPIPS factor reaches 0.")
@batch_options
@device_option
@quiet_option
@_reports_errors
def score_cmd(input_dir: Path, results: Path, **opts: Any) -> None:
    """Estimate the contest score of RESULTS (a folder or an images.zip) against INPUT_DIR.

    Scores the files exactly as they would be submitted: their JPEG bytes are decoded once and
    fed to the evaluation classifiers (attack success rate), pytorch-fid's Inception (FID
    between originals and results) and LPIPS (per pair, at full size). The combined score is
    our reconstruction of the contest formula (see README, "Scoring"):

    \b
      100 * ASR * sqrt(1 - min(FID, 200)/200) * sqrt(1 - 2*(clip(LPIPS, 0.2, 0.7) - 0.2))

    FID from fewer than 2048 images is biased upwards (rank-deficient covariance): compare
    such values only between runs on the same images.

    \b
    Examples:
      unrestrict score data/sample out/
      unrestrict score data/sample images.zip --run-dir out/ --json score.json
      unrestrict score data/sample out/ --eval-models efficientnet_lite2 --report report/
    """
    from .metrics import ScoreFormula
    from .score import ScoreConfig, score, summary_rows

    _setup_logging(opts["quiet"])
    cfg = ScoreConfig(
        eval_models=opts["eval_models"] or None,
        lpips_nets=opts["lpips_net"],
        batch_size=opts["batch_size"] or 16,
        num_workers=opts["num_workers"],
        formula=ScoreFormula(opts["fid_cap"], opts["lpips_low"], opts["lpips_high"]),
        partial=opts["partial"],
    )
    result = score(input_dir, results, cfg, device=_pick_device(opts["device"]),
                   run_dir=opts["run_dir"], progress=not opts["quiet"])
    s = result.summary
    if opts["json_path"]:
        result.write_json(opts["json_path"])
    if opts["csv_path"]:
        result.write_csv(opts["csv_path"])
    if opts["report_dir"]:
        from .report import write_report

        index = write_report(result, input_dir, results, opts["report_dir"])
        click.echo(f"report: {index}", err=True)
    width = max(len(k) for k, _ in summary_rows(s))
    click.echo("\n".join(f"{k:<{width}}  {v}" for k, v in summary_rows(s)))


# -- pack ----------------------------------------------------------------------------------

@cli.command("pack")
@click.argument("results", required=False,
                type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--input", "input_dir", required=True,
              type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="The contest input folder (dev.csv + images/) the results belong to.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              default=Path("images.zip"), show_default=True, help="The zip to write.")
@click.option("--check", "check_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None, help="Validate an existing zip instead of building one.")
@_reports_errors
def pack_cmd(results: Path | None, input_dir: Path, output: Path, check_path: Path | None) -> None:
    """Build the submission zip (images/<ImageId> for every dev.csv row) and validate it.

    Before writing, RESULTS is checked for missing or extra files, names that do not match
    dev.csv, files that are not decodable JPEGs, sizes that differ from the originals and
    non-RGB images; every problem is listed and nothing is written. The zip is written
    atomically and reproducibly (same results, same SHA-256).

    \b
    Examples:
      unrestrict pack out/ --input data/sample -o images.zip
      unrestrict pack --check images.zip --input data/sample
    """
    from .pack import check_zip, pack

    if check_path is not None:
        if results is not None:
            raise click.UsageError("give either RESULTS to pack or --check ZIP, not both")
        s = check_zip(check_path, input_dir)
        verb = "valid"
    else:
        if results is None:
            raise click.UsageError("give RESULTS (a folder) to pack, or --check ZIP")
        s = pack(results, input_dir, output)
        verb = "written"
    click.echo(f"{s.path}: {verb}, {s.count} images, {s.total_bytes} bytes "
               f"({s.payload_bytes} of JPEG), sha256 {s.sha256}")


def main() -> None:
    from .utils import keep_freed_memory

    keep_freed_memory()
    cli(prog_name="unrestrict")


if __name__ == "__main__":
    main()
