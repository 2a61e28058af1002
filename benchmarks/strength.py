"""Attack strength on held-out models: each family alone, the natural families together, and
the contest teams' L-inf DI-MI-FGSM baseline.

Every configuration attacks the same ensemble (efficientnet_lite0 + mobilenet_v2, with
efficientnet_lite1 for the per-image budget check) and is scored by `unrestrict score` on
efficientnet_lite2, which no configuration ever sees.

    python benchmarks/strength.py                       # sample set, all configurations
    python benchmarks/strength.py --only baseline,natural --input benchmarks/work/derived-96
    python benchmarks/strength.py --config "mine=--family color --val-margin 2"
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
from pathlib import Path

from _common import ROOT, SAMPLE, WORK, command_line, device_line, run, unrestrict, write_result

EVAL = "efficientnet_lite2"
CONFIGS: dict[str, list[str]] = {
    "baseline": ["--preset", "baseline"],
    "color": ["--family", "color"],
    "style": ["--family", "style"],
    "geometry": ["--family", "geometry"],
    "natural": [],
    "natural+geometry": ["--family", "color,style,geometry"],
    "natural, full budget": ["--stages", "1", "--steps", "40", "--refine", "0"],
    "natural, JPEG q85": ["--jpeg-quality", "85"],
    "natural, JPEG q75": ["--jpeg-quality", "75"],
}
DESCRIPTION = {
    "baseline": "L-inf 16/255 DI-MI-FGSM, 80 steps, CW margin, DI p=0.7 (pixel family)",
    "color": "colour family alone, staged budget",
    "style": "style family alone, staged budget",
    "geometry": "geometry family alone, staged budget",
    "natural": "the default: colour + style, staged per-image budget, JPEG q95",
    "natural+geometry": "colour + style + geometry, staged budget",
    "natural, full budget": "colour + style, one stage at full bounds (no minimal budget)",
    "natural, JPEG q85": "the default at JPEG quality 85",
    "natural, JPEG q75": "the default at JPEG quality 75",
}


def _quoted(command: str) -> str:
    # Results written before the commit was recorded hold the bare command.
    return command if command.startswith("`") else f"`{command}`"


def _mean_bytes(out: Path) -> float:
    files = [p for p in out.iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files) / max(len(files), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=SAMPLE)
    ap.add_argument("--only", default=None, help="comma-separated subset of the configurations")
    ap.add_argument("--config", action="append", default=[], metavar="NAME=ARGS",
                    help="an extra configuration: name and generate arguments")
    ap.add_argument("--tag", default=None, help="result file name [default: strength-<input>]")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--baseline-from", type=Path, default=None,
                    help="take the baseline row from an earlier run's .json on the same input")
    ap.add_argument("--render", type=Path, default=None,
                    help="only re-render the table of an existing results .json")
    args = ap.parse_args()
    if args.render:
        doc = json.loads(args.render.read_text())
        if args.baseline_from:  # e.g. a baseline timed again on a quiet machine
            doc["rows"] = _with_baseline(doc["rows"], args.baseline_from)
            doc["meta"]["baseline_from"] = str(args.baseline_from)
        path = write_result(args.render.stem, render(doc["meta"], doc["rows"]), doc)
        print(f"wrote {path}")
        return

    configs = dict(CONFIGS)
    for c in args.config:
        name, _, rest = c.partition("=")
        configs[name] = shlex.split(rest)
        DESCRIPTION[name] = rest
    if args.only:
        # Commas that start a name's own words ("natural, full budget") do not split it.
        wanted = re.split(r",(?=\S)", args.only)
        unknown = [k for k in wanted if k not in configs]
        if unknown:
            ap.error(f"unknown configuration(s) {unknown}; known: {list(configs)}")
        configs = {k: configs[k] for k in wanted}
    tag = args.tag or f"strength-{args.input.name}"
    n = sum(1 for _ in (args.input / "images").iterdir())

    rows = []
    for name, extra in configs.items():
        out = WORK / tag / name
        shutil.rmtree(out, ignore_errors=True)
        gen = unrestrict("generate", str(args.input), str(out), "-b", str(args.batch_size),
                         "-q", *extra)
        g = run(gen)
        written = int(re.search(r"(\d+) written", g.stdout).group(1))
        val = re.search(r"fooled validation models (\d+)/(\d+)", g.stdout)
        js = out / ".unrestrict" / "score.json"
        s = run(unrestrict("score", str(args.input), str(out), "--eval-models", EVAL,
                           "--json", str(js), "-q"))
        summary = json.loads(js.read_text())
        row = {
            "config": name, "description": DESCRIPTION.get(name, ""),
            "asr": summary["asr"], "lpips": summary["lpips"], "fid": summary["fid"],
            "score": summary["score"], "clean_accuracy": summary["clean_accuracy"],
            # 100 * ASR * LPIPS factor: the formula without its FID term, because FID from
            # a few dozen images is dominated by its small-sample bias.
            "score_no_fid": 100 * summary["asr"] * summary["score_factors"]["lpips"],
            # Share of images that fooled the budget-check model after the JPEG round trip.
            "val_success": int(val.group(1)) / int(val.group(2)) if val else None,
            "bytes_per_image": _mean_bytes(out),
            "seconds_per_image": g.seconds / max(written, 1), "n_images": summary["n_images"],
            "generate": shown_command(gen),
            "score_seconds": s.seconds,
        }
        rows.append(row)
        print(f"{name:>22}: ASR {row['asr']:.3f}  LPIPS {row['lpips']:.4f}  FID {row['fid']:.1f}"
              f"  score {row['score']:.2f} (no FID {row['score_no_fid']:.2f})"
              f"  {row['seconds_per_image']:.2f} s/img", flush=True)

    meta = {"command": command_line(), "device": device_line(), "input": args.input.name,
            "n_images": n}
    if args.baseline_from:
        meta["baseline_from"] = str(args.baseline_from)
        rows = _with_baseline(rows, args.baseline_from)
    path = write_result(tag, render(meta, rows), {"meta": meta, "rows": rows})
    print(f"wrote {path}")


def _with_baseline(rows: list[dict], path: Path) -> list[dict]:
    """``rows`` with the baseline row taken from another run's JSON (same input)."""
    prior = json.loads(path.read_text())
    base = [dict(r) for r in prior["rows"] if r["config"] == "baseline"]
    for r in base:  # the file is usually overwritten by this run: keep where the row came from
        r.setdefault("measured_by", prior["meta"]["command"])
    return base + [r for r in rows if r["config"] != "baseline"]


def shown_command(cmd: list[str]) -> str:
    """The command as a user would type it from benchmarks/: shell-quoted, short paths."""
    def short(a: str) -> str:
        if a.startswith(str(WORK) + "/"):
            return "work/" + a[len(str(WORK)) + 1:]
        return a.replace(str(ROOT) + "/", "../")
    return shlex.join(["unrestrict", *(short(a) for a in cmd[3:])])


def render(meta: dict, rows: list[dict]) -> str:
    """The markdown table of one run, from the values it measured."""
    n = meta["n_images"]
    base = next((r for r in rows if r["config"] == "baseline"), None)

    def ratio(key: str, r: dict) -> str:
        if base is None or base[key] <= 0:
            return "-"
        return f"{r[key] / base[key]:.2f}x"

    md = [f"### Attack strength on held-out {EVAL} ({meta['input']}, {n} images)\n",
          f"Device: {meta['device']}  ",
          f"Command: {_quoted(meta['command'])}  ",
          "Attack ensemble efficientnet_lite0 + mobilenet_v2; budget check on efficientnet_lite1;"
          f" scored on {EVAL} (held out from every configuration). `fooled budget check` is the "
          "share of results that fool efficientnet_lite1 after the JPEG round trip, as "
          f"`generate` reported it. FID from {n} images is "
          "rank-deficient and biased upwards, far above what the same change scores on "
          "thousands of images: compare it between rows only. `score` is the full formula with "
          "that FID; `no-FID score` = 100 * ASR * LPIPS factor.\n",
          "| config | held-out ASR | fooled budget check | mean LPIPS | FID (biased) | score | "
          "vs baseline | no-FID score | vs baseline | s/img | KB/img |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        val = "-" if r.get("val_success") is None else f"{r['val_success']:.3f}"
        md.append(f"| {r['config']} | {r['asr']:.3f} | {val} | {r['lpips']:.4f} | {r['fid']:.1f} | "
                  f"{r['score']:.2f} | {ratio('score', r)} | {r['score_no_fid']:.2f} | "
                  f"{ratio('score_no_fid', r)} | {r['seconds_per_image']:.2f} | "
                  f"{r['bytes_per_image'] / 1024:.0f} |")
    if meta["input"].startswith("derived"):
        md.append("\nThe derived images are random crops, flips and mild colour jitters of the 24 "
                  "sample photos (`derive.py`): more samples for FID and LPIPS, but not that many "
                  "independent photos.")
    measured_by = [r["measured_by"] for r in rows if "measured_by" in r]
    if measured_by:
        md.append(f"\nThe baseline row is reused from an earlier run on the same input "
                  f"(`--baseline-from`): {measured_by[0]}.")
    elif "baseline_from" in meta:
        md.append(f"\nThe baseline row is taken from `{meta['baseline_from']}` (same input).")
    md.append("\nGenerate commands (each followed by "
              f"`unrestrict score INPUT OUT --eval-models {EVAL}`):\n")
    md += [f"- {r['config']} ({r['description']}): `{r['generate']}`" for r in rows]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
