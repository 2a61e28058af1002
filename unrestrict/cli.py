"""Command line: click declarations over the library. Choices, defaults and validation come
from the library; its own errors become one-line messages with their exit codes."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .attack import PRESET_HELP, PRESETS, AttackConfig, resolve_preset
from .errors import EXIT_CODES, ConfigError, UnrestrictError
from .generate import GenerateConfig
from .metrics import ScoreFormula
from .process import keep_freed_memory, pick_device, setup_logging
from .score import ScoreConfig

F = TypeVar("F", bound=Callable[..., Any])
EXIT_HELP = "Exit status: " + ", ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + "."


class _Failure(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # click exits with it


def _reports_errors(f: F) -> F:
    """Library errors a user can act on become messages and exit codes; bugs keep tracebacks."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ConfigError as e:
            raise click.UsageError(str(e)) from e
        except UnrestrictError as e:
            raise _Failure(str(e), e.exit_code) from e
        except KeyboardInterrupt:
            raise _Failure("interrupted; everything finished so far is kept", 130) from None

    return wrapper  # type: ignore[return-value]


def _csv_list(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


def _shown(value: Any, preset: str = "") -> str:
    if value is None or value is False:
        return ""
    text = ",".join(value) if isinstance(value, tuple) else str(value)
    return f" [default: {text}{f' ({preset})' if preset else ''}]"


def _preset_defaults(name: str) -> str:
    """An attack setting's default in each preset, for --help."""
    values = {p: getattr(c, name) for p, c in PRESETS.items()}
    if len({str(v) for v in values.values()}) == 1:
        return _shown(next(iter(values.values())))
    shown = {p: "None" if v is None else _shown(v)[11:-1] for p, v in values.items()}
    return " [default: " + ", ".join(f"{v} ({p})" for p, v in shown.items()) + "]"


def config_options(cls: type, defaults: Callable[[str], str] | None = None,
                   skip: tuple[str, ...] = ()) -> Callable[[F], F]:
    """One option per documented field of the dataclass ``cls`` (``--step-size`` sets
    ``step_size``), default None: the caller overrides only what was given."""

    def deco(f: F) -> F:
        for fld in reversed(dataclasses.fields(cls)):
            if "help" not in fld.metadata or fld.name in skip:
                continue
            choices, help_ = fld.metadata["choices"], fld.metadata["help"]
            names = [f"--{fld.name.replace('_', '-')}"] + [x for x in [fld.metadata["flag"]] if x]
            kind: dict[str, Any] = {"type": int if "int" in str(fld.type) else float}
            if "tuple" in str(fld.type):
                kind = {"callback": _csv_list, "metavar": "LIST"}
                help_ += " Comma-separated" + (", from " + ", ".join(choices) if choices else "")
            elif "bool" in str(fld.type):
                names[0] += f"/--no-{fld.name.replace('_', '-')}"
                kind = {}
            elif choices:
                kind = {"type": click.Choice(list(choices))}
                if isinstance(choices, dict) and isinstance(next(iter(choices.values())), str):
                    help_ += " " + "; ".join(f"{k}: {v}" for k, v in choices.items()) + "."
            shown = defaults(fld.name) if defaults else _shown(fld.default)
            f = click.option(*names, fld.name, default=None, help=help_ + shown, **kind)(f)
        return f

    return deco


def _given(cls: type, opts: dict[str, Any]) -> dict[str, Any]:
    """The options for fields of ``cls`` that were given on the command line."""
    return {f.name: opts[f.name] for f in dataclasses.fields(cls)
            if opts.get(f.name) is not None}


def common_options(f: F) -> F:
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bar, errors only.")(f)
    return click.option("--device", default="auto", show_default=True,
                        help="cpu, cuda, cuda:N, or auto (CUDA if available; under torchrun, "
                             "GPU LOCAL_RANK).")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_HELP)
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
        unrestrict generate data/sample out/       # attack (texture + mild colour grade)
        unrestrict score data/sample out/          # ASR, FID, LPIPS, naturalness, score
        unrestrict pack out/ --input data/sample -o images.zip
    """


@cli.command("models", epilog=EXIT_HELP)
@click.option("--all", "include_all", is_flag=True,
              help="Also list every torchvision ImageNet classifier.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_reports_errors
def models_cmd(include_all: bool, as_json: bool) -> None:
    """List classifiers: input size, their weights' status (verified: the checksum matches)
    and origin.

    \b
    offline      real ImageNet weights shipped in registry packages (no network, ever)
    torchvision  any torchvision classifier, e.g. torchvision:resnet50 or
                 torchvision:mobilenet_v2.IMAGENET1K_V1 (cache or download)
    timm         any timm model, e.g. timm:inception_v3.tf_adv_in1k (cache or download)
    """
    from .models import format_models, list_models

    infos = list_models(include_all)
    click.echo(json.dumps([dataclasses.asdict(i) for i in infos], indent=2) if as_json
               else format_models(infos))


@cli.command("generate", epilog=EXIT_HELP)
@click.argument("input_dir", type=click.Path(path_type=Path, file_okay=False))
@click.argument("output_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--preset", type=click.Choice(list(PRESETS)), default="natural", show_default=True,
              help="; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()) + ".")
@config_options(AttackConfig, _preset_defaults)
@click.option("--eps", type=click.FloatRange(min=0, min_open=True),
              help="Shorthand for --set pixel.eps=EPS/255 (L-inf bound in 0-255 units).")
@click.option("--set", "set_", multiple=True, metavar="FAMILY.OPTION=VALUE",
              help="Override a family option, e.g. --set texture.fine=2.4 (repeatable).")
@click.option("--shard", metavar="I/N",
              help="Process rows I, I+N, I+2N, ... (torchrun sets this from RANK/WORLD_SIZE).")
@config_options(GenerateConfig)
@common_options
@_reports_errors
def generate_cmd(input_dir: Path, output_dir: Path, preset: str, **opts: Any) -> None:
    """Write an adversarial JPEG for every row of INPUT_DIR/dev.csv into OUTPUT_DIR.

    Every input is checked first (each image fully decoded): all problems are listed at once
    and nothing is written. Outputs keep the input's file names and sizes. OUTPUT_DIR is bound
    to its input and settings; rerunning the same command resumes, skipping finished images.
    Run metadata goes to OUTPUT_DIR/.unrestrict/.

    \b
    Examples:
      unrestrict generate data/sample out/               # every result within the limits
      unrestrict generate data/sample out/ --preset bold # more fooled, for model scoring
      unrestrict generate data/sample out/ --family texture --stages 3 --steps 20
      unrestrict generate data/sample base/ --preset baseline
      unrestrict generate dev/ out/ --models torchvision:resnet50,efficientnet_lite0 \\
          --val-models efficientnet_lite1 --amp bf16 -b 32
      torchrun --nproc-per-node 8 -m unrestrict generate dev/ out/   # 8 GPUs, 8 shards
    """
    from .generate import generate, parse_shard, shard_from_env
    from .perturb import parse_family_options

    setup_logging(opts["quiet"])
    overrides = _given(AttackConfig, opts)
    family_options = parse_family_options(opts["set_"])
    if opts["eps"] is not None:
        family_options.setdefault("pixel", {})["eps"] = str(opts["eps"] / 255)
    attack = resolve_preset(preset, family_options, **overrides)
    cfg = GenerateConfig(attack=attack, **_given(GenerateConfig, opts))
    rank, world = parse_shard(opts["shard"]) if opts["shard"] else shard_from_env()
    s = generate(input_dir, output_dir, cfg, device=pick_device(opts["device"]), rank=rank,
                 world=world, progress=not opts["quiet"])
    click.echo(s)
    for p in s.skipped:
        click.echo(f"skipped: {p}", err=True)


@cli.command("score", epilog=EXIT_HELP)
@click.argument("input_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("results", type=click.Path(path_type=Path, exists=True))
@click.option("--run-dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="The generate output folder, when RESULTS is a zip.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the summary (asr, fid, lpips, naturalness, score, ...) as JSON.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write per-image predictions, success, LPIPS and naturalness as CSV.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Write an HTML report (least natural first), a contact sheet and full-size "
                   "copies of the shown pairs to this folder.")
@config_options(ScoreConfig)
@config_options(ScoreFormula)
@common_options
@_reports_errors
def score_cmd(input_dir: Path, results: Path, **opts: Any) -> None:
    """Estimate the contest score of RESULTS (a folder or an images.zip) against INPUT_DIR.

    The result files' own bytes are decoded once and fed to the evaluation classifiers (attack
    success rate), pytorch-fid's Inception (FID), LPIPS and the naturalness measures (colour
    drift, flat-region noise, added fine detail; README: Naturalness measures). The combined
    score is our reconstruction of the contest formula (README: Scoring):

    \b
      100 * ASR * sqrt(1 - min(FID, 200)/200) * sqrt(1 - 2*(clip(LPIPS, 0.2, 0.7) - 0.2))

    FID from fewer than 2048 images is biased upwards: compare it only between runs on the
    same images.

    \b
    Examples:
      unrestrict score data/sample out/
      unrestrict score data/sample images.zip --run-dir out/ --json score.json
      unrestrict score data/sample out/ --eval-models efficientnet_lite2 --report report/
    """
    from .score import format_summary, score

    setup_logging(opts["quiet"])
    formula = ScoreFormula(**_given(ScoreFormula, opts))
    cfg = ScoreConfig(formula=formula, **_given(ScoreConfig, opts))
    result = score(input_dir, results, cfg, device=pick_device(opts["device"]),
                   run_dir=opts["run_dir"], progress=not opts["quiet"])
    if opts["json_path"]:
        result.write_json(opts["json_path"])
    if opts["csv_path"]:
        result.write_csv(opts["csv_path"])
    if opts["report_dir"]:
        from .report import write_report

        index = write_report(result, input_dir, results, opts["report_dir"])
        click.echo(f"report: {index}", err=True)
    click.echo(format_summary(result.summary))


@cli.command("pack", epilog=EXIT_HELP)
@click.argument("results", required=False,
                type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--input", "input_dir", required=True,
              type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="The contest input folder (dev.csv + images/) the results belong to.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              default=Path("images.zip"), show_default=True, help="The zip to write.")
@click.option("--check", "check_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Validate an existing zip instead of building one.")
@_reports_errors
def pack_cmd(results: Path | None, input_dir: Path, output: Path, check_path: Path | None) -> None:
    """Build the submission zip (images/<ImageId> for every dev.csv row), validated first:
    missing, extra or misnamed files, undecodable or non-JPEG files, wrong sizes and non-RGB
    images are all listed and nothing is written. The zip is written atomically and
    reproducibly (same results, same SHA-256).

    \b
    Examples:
      unrestrict pack out/ --input data/sample -o images.zip
      unrestrict pack --check images.zip --input data/sample
    """
    from .pack import check_zip, pack

    if (results is None) == (check_path is None):
        raise click.UsageError("give either RESULTS (a folder) to pack, or --check ZIP")
    s = check_zip(check_path, input_dir) if check_path else pack(results, input_dir, output)
    click.echo(f"{s.path}: {'valid' if check_path else 'written'}, {s.count} images, "
               f"{s.total_bytes} bytes ({s.payload_bytes} of JPEG), sha256 {s.sha256}")


def main() -> None:
    keep_freed_memory()
    cli(prog_name="unrestrict")


if __name__ == "__main__":
    main()
