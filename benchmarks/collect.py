"""Assemble benchmarks/RESULTS.md from the tables the benchmark scripts wrote.

Every table comes verbatim from benchmarks/results/*.md, each of which records the command
and the device that produced it; nothing in RESULTS.md is typed by hand except the section
order and this header. The README's summary table (between its results markers) is built
from the same results/*.json.

    python benchmarks/collect.py
"""

from __future__ import annotations

import json
import re

from _common import RESULTS, ROOT

ORDER = ["strength-cross-arch-sample", "strength-cross-arch-derived", "strength-same-family",
         "gpu-strength", "naturalness", "step_overhead", "memory", "prescan", "score_speed",
         "lpips_cost"]
HEADER = """# Benchmark results

Produced by the scripts in this folder; each table below was written by the script named in
its `Command:` line, on the device it names. Rerun a script to refresh its table, then
`python benchmarks/collect.py` to rebuild this page.

The attack tables use the four offline ImageNet models that ship in registry packages.
EfficientNet-Lite0/1/2 are one architecture family, so transfer among them flatters an attack;
the **cross-arch** protocol (first) attacks Lite0 alone, checks the per-image budget on Lite1
and claims transfer on MobileNetV2, another architecture and training recipe. The
**same-family** protocol (attack Lite0 + MobileNetV2, score on Lite2) follows for comparison.
Every configuration runs beside the L-inf baseline with the same models.

What the rows taught, option by option, and what was seen in the images at full size:
[FINDINGS.md](FINDINGS.md).
"""


def _load(stem: str):
    path = RESULTS / f"{stem}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _rows(stem: str) -> tuple[dict, dict[str, dict]]:
    """A strength table's meta and its rows by configuration, with the rows of its follow-up
    tables (``<stem>-<suffix>``: more configurations on the same set) added; the main table's
    row wins where both have one."""
    doc = _load(stem)
    if not doc:
        return {}, {}
    rows: dict[str, dict] = {}
    for path in sorted(RESULTS.glob(f"{stem}-*.json"), reverse=True):
        rows.update({r["config"]: r for r in json.loads(path.read_text())["rows"]})
    rows.update({r["config"]: r for r in doc["rows"]})
    return doc["meta"], rows


def _derived_sets(protocol: str, prefix: str = "") -> list[str]:
    """Stems of the main strength tables on derived sets (``...-derived-<N>``), without their
    follow-ups (``...-derived-<N>-<suffix>``), which :func:`_rows` merges into them."""
    pattern = re.compile(rf"{prefix}strength-{protocol}-derived-\d+")
    return sorted(p.stem for p in RESULTS.glob(f"{prefix}strength-{protocol}-derived-*.json")
                  if pattern.fullmatch(p.stem))


def readme_summary() -> str:
    """A short table for the README, built from the JSON the scripts wrote."""
    lines = ["| measurement | result | target |", "|---|---|---|"]
    sets = [("strength-cross-arch-sample", "cross-arch, sample set"),
            *((s, "cross-arch, derived set") for s in _derived_sets("cross-arch")),
            ("strength-same-family-sample", "same-family, sample set"),
            *((s, "same-family, derived set") for s in _derived_sets("same-family")),
            ("gpu-strength-cross-arch-sample", "cross-arch, sample set, attacks on GPU"),
            *((s, "cross-arch, derived set, attacks on GPU")
              for s in _derived_sets("cross-arch", prefix="gpu-"))]
    for stem, label in sets:
        doc = _load(stem)
        if not doc:
            continue
        by = {r["config"]: r for r in doc["rows"]}
        b, n = by.get("baseline"), by.get("natural")
        if not (b and n):
            continue
        m = doc["meta"]["eval_models"][0]
        size = doc["meta"]["n_images"]
        if stem.startswith("gpu-") and (commit := _commit_of(doc)):
            label = f"{label}, defaults of `{commit}`"  # they may predate the CPU tables'

        def natural(r: dict) -> str:
            tone = f"{r['tone_shift']:.1f}" if "tone_shift" in r else "-"
            return (f"{r['lpips']:.3f} / {r['color_drift']:.2f}, {r['color_drift_p95']:.2f} / "
                    f"{r['flat_noise']:.2f} / {r['detail_excess']:.2f}, "
                    f"{r['detail_excess_p95']:.2f} / {tone}")

        lines.append(
            f"| held-out {m} ASR, natural vs L-inf baseline ({label}, {size} images) | "
            f"{n['asr_per_model'][m]:.3f} vs {b['asr_per_model'][m]:.3f} | >= baseline |")
        lines.append(
            f"| LPIPS / drift mean, p95 / flat noise / detail mean, p95 / tone shift, natural vs "
            f"baseline ({label}) | {natural(n)} vs {natural(b)} | <= 0.08 / 1.5, 3 / 1.2 / 0.3, "
            "0.6 / 3 |")
        if n.get("passes_per_image") and b.get("passes_per_image"):
            lines.append(f"| attack passes per image, natural vs baseline ({label}) | "
                         f"{n['passes_per_image']:.0f} vs {b['passes_per_image']:.0f} "
                         f"({n['passes_per_image'] / b['passes_per_image']:.2f}x) | <= 4x |")
    for dev in ("cpu", "gpu"):
        lines += _step_lines(dev)
    lines += _ops_lines()
    lines += _later_lines()
    return "\n".join(lines)


def _step_lines(dev: str) -> list[str]:
    """The step-overhead rows of the README summary for one device's table."""
    lines: list[str] = []
    step = _load(f"step_overhead-{dev}")
    dev = dev.upper()
    if step:
        # Three decimals: the target sits at 1.10 and runs land on both sides of it. The
        # default's paired ratio too, so the summary never picks the kinder estimate.
        main = [r for r in step if "family" in r and "copies" in r]
        default = [f"{r['ratio']:.3f}x (paired {r['ratio_paired']:.3f}x)"
                   for r in main if r["family"].startswith("default (")]
        others = ", ".join(f"{r['family']} {r['ratio']:.3f}x"
                           for r in main if not r["family"].startswith("default (")
                           and r["batch"] == max(x["batch"] for x in main))
        lines.append(f"| step time / raw attack-model fwd+bwd passes it makes ({dev}, batch "
                     f"{'/'.join(str(b) for b in sorted({r['batch'] for r in main}))}) | "
                     f"default {' / '.join(default)}; at the largest batch: {others} "
                     "| <= 1.10x |")
        fold = [r for r in step if r["family"].startswith("raw pass, BatchNorm not folded")]
        if fold:
            pairs = "; ".join(f"{r['folded_s'] * 1e3:.0f} vs {r['unfolded_s'] * 1e3:.0f} ms"
                              for r in fold)
            lines.append(f"| raw ensemble fwd+bwd, BatchNorm folded vs not ({dev}, batch "
                         f"{'/'.join(str(r['batch']) for r in fold)}) | {pairs} | |")
        # generate chunks batches on the CPU only (`--cpu-batch`); a GPU takes them whole.
        rows = (("images one by one", "batched", "what `--cpu-batch 1` pays"),
                ("chunks of", "batched", "what the default `--cpu-batch` pays"),
                ("the default's surrogate", "exact gradients",
                 "what the default's backward-pass tricks cost"))
        if dev == "GPU":
            rows = (("images one by one", "batched", "what batching saves"), rows[2])
        for how, base, what in rows:
            these = [r for r in step if r["family"].startswith(f"raw pass, {how}")]
            if these:
                label = these[0]["family"].removeprefix("raw pass, ")
                lines.append(f"| raw ensemble fwd+bwd, {label} / {base} ({dev}, batch "
                             f"{'/'.join(str(r['batch']) for r in these)}; {what}) | "
                             + "; ".join(f"{r['ratio']:.2f}x" for r in these) + " | |")
    return lines


def _ops_lines() -> list[str]:
    """The README summary's row of step_overhead's operator counts (``--device meta``)."""
    ops = _load("step_overhead-ops")
    if not ops:
        return []
    batches = sorted({r["batch"] for r in ops})
    per = [f"{name} " + " / ".join(f"{r['ops_step'] / r['ops_raw']:.3f}x" for b in batches
                                   for r in ops if r["family"] == name and r["batch"] == b)
           for name in ("natural preset", "texture", "color", "pixel (full 500x500)")]
    return [f"| operators a step dispatches / the raw passes' (the GPU's code paths, counted on "
            f"meta tensors, batch {'/'.join(map(str, batches))}; each a kernel launch, and at "
            f"small batches a GPU step's time follows them; the host's random draws left "
            f"out) | {'; '.join(per)} | <= 1.10x |"]


def _later_lines() -> list[str]:
    lines: list[str] = []
    _, by = _rows("strength-cross-arch-sample")
    if "bold" in by and "natural, cpu batch 1" in by:  # that row ran bold (strength.py)
        one, four = by["natural, cpu batch 1"], by["bold"]
        lines.append("| `generate` s/img, `--cpu-batch 1` vs the default chunks of 4 (CPU, "
                     f"bold, cross-arch sample) | {one['seconds_per_image']:.2f} vs "
                     f"{four['seconds_per_image']:.2f} "
                     f"({one['seconds_per_image'] / four['seconds_per_image']:.2f}x) | |")
    mem = _load("memory-cpu")
    if mem and len(mem["memory"]) >= 2:
        a, z = mem["memory"][0], mem["memory"][-1]
        lines.append(f"| peak RSS, {z['images']} vs {a['images']} images | generate "
                     f"{z['generate_rss_mb'] / a['generate_rss_mb']:.2f}x, score "
                     f"{z['score_rss_mb'] / a['score_rss_mb']:.2f}x | <= 1.1x |")
    sp = _load("score_speed-cpu")
    if sp:
        lines.append(f"| `unrestrict score` (ASR+FID+LPIPS) / `python -m pytorch_fid` (FID), "
                     f"{sp['images']} images | {sp['ratio']:.2f}x (FID {sp['fid_unrestrict']:.3f}"
                     f" vs {sp['fid_pytorch_fid']:.3f}) | <= 1.2x |")
    return lines


def quickstart_sentence() -> str:
    """What the README's quick-start `generate` line measured, from the sample-set run."""
    doc = _load("strength-same-family-sample")
    row = next((r for r in doc["rows"] if r["config"] == "natural"), None) if doc else None
    if row is None:
        return "(run `python benchmarks/strength.py` and `python benchmarks/collect.py`)"
    n = row["n_images"]
    val = ("" if row.get("val_success") is None else
           f"the budget-check model efficientnet_lite1 on {row['val_success'] * n:.0f} and ")
    m = doc["meta"]["eval_models"][0]
    return (f"Measured on a 2-core CPU (`benchmarks/strength.py --protocol same-family`, row "
            f"`natural`, the default models): the `generate` line took "
            f"{row['seconds_per_image'] * n / 60:.0f} minutes "
            f"({row['seconds_per_image']:.1f} s per image), and its {n} results fooled "
            f"{val}{m}, which the attack never consulted, on "
            f"{row['asr_per_model'][m] * n:.0f} (the clean model gets "
            f"{row['clean_accuracy']:.3f} of the originals right), at mean LPIPS "
            f"{row['lpips']:.3f}; {row['within_limits'] * n:.0f} stayed within every "
            "naturalness limit. See [benchmarks/RESULTS.md](benchmarks/RESULTS.md).")


def failure_policy_table() -> str:
    """The --on-failure trade-off as measured (cross-arch protocol, sample set)."""
    meta, by = _rows("strength-cross-arch-sample")
    policies = (("strongest", "bold"), ("ensemble", "natural, failures ensemble-minimal"),
                ("original", "natural, failures unchanged"))
    if not all(c in by for _, c in policies):
        return ""
    m = meta["eval_models"][0]
    n = meta["n_images"]
    out = [f"Measured (`benchmarks/strength.py`, cross-arch protocol, sample set of {n} images; "
           f"held out: {m}):\n",
           f"| `--on-failure` | fooled {m} | LPIPS | colour drift | flat noise | added detail "
           "| within every limit | fooled every eval model and within limits |",
           "|---|---|---|---|---|---|---|---|"]
    for policy, config in policies:
        r = by[config]
        out.append(f"| `{policy}` | {r['asr_per_model'][m] * n:.0f} | {r['lpips']:.3f} | "
                   f"{r['color_drift']:.2f} | {r['flat_noise']:.2f} | "
                   f"{r['detail_excess']:.2f} | {r['within_limits'] * n:.0f} | "
                   f"{r['natural_success'] * n:.0f} |")
    return "\n".join(out)


# Each --preset and the strength.py row that ran its settings.
PRESET_ROWS = {"natural": "natural", "bold": "bold",
               "strong": "natural, mid+coarse x1.5, 6 stages", "baseline": "baseline"}


def presets_table() -> str:
    """The presets side by side (cross-arch protocol, every set measured)."""
    presets = tuple(PRESET_ROWS.items())
    out = []
    for stem in ("strength-cross-arch-sample", *_derived_sets("cross-arch")):
        meta, by = _rows(stem)
        if not all(c in by for _, c in presets):
            continue
        evals, n = meta["eval_models"], meta["n_images"]
        if not out:
            out = ["| `--preset` | set | " + " | ".join(f"fooled {m}" for m in evals)
                   + " | LPIPS | within every naturalness limit | fooled every eval model and "
                   "within every limit |", "|---|---|" + "---|" * (len(evals) + 3)]
        for preset, config in presets:
            r = by[config]
            fooled = " | ".join(f"{r['asr_per_model'][m] * n:.0f}" for m in evals)
            out.append(f"| `{preset}` | {meta['input']} ({n}) | {fooled} | {r['lpips']:.3f} | "
                       f"{_within(r, n)} | {r['natural_success'] * n:.0f} |")
    if not out:
        return ""
    rows = " and ".join(f"`{p}` the row `{r}`" for p, r in presets if p != r)
    return "\n".join([f"Measured (`benchmarks/strength.py`, cross-arch protocol; {rows}, the "
                      "same settings):\n", *out])


# Points between looking untouched and fooling the held-out model, from every table on a
# derived set (cross-arch): the dials tried so far, each at the commit its table names.
FRONTIER_ROWS = ("natural, texture x0.5", "natural, cap 16", "strong, cap 16, val margin 3",
                 "natural, mid x0.5", "natural, val margin 2", "natural, val margin 3", "natural",
                 "natural, cap 16, gain 0.5", "strong, val margin 3",
                 "natural, masking power 0.6", "strong, masking power 0.6",
                 "natural, natural limit 1", "strong, natural limit 1",
                 "natural, natural limit 1.2", "natural, natural limit 1.5",
                 "natural, mid+coarse x1.5, 6 stages", "bold", "baseline")


def frontier_table() -> str:
    """The frontier rows of each derived set, fewest held-out successes first."""
    out: list[str] = []
    for stem in _derived_sets("cross-arch"):
        main = _load(stem)
        docs = [main, *(_load(p.stem) for p in sorted(RESULTS.glob(f"{stem}-*.json")))]
        found: dict[str, tuple[dict, dict]] = {}
        for doc in docs:  # the main table wins, as in _rows
            for r in doc["rows"]:
                if r["config"] in FRONTIER_ROWS:
                    found.setdefault(r["config"], (r, doc))
        if not found:
            continue
        meta = main["meta"]
        m, n = meta["eval_models"][0], meta["n_images"]
        if not out:
            out = [f"| configuration | set | fooled {m} | LPIPS | within every naturalness limit "
                   "| fooled every eval model and within every limit | passes per image "
                   "| commit |", "|---|---|---|---|---|---|---|---|"]
        for config, (r, doc) in sorted(found.items(), key=lambda kv: kv[1][0]["asr_per_model"][m]):
            out.append(f"| `{config}` | {meta['input']} ({n}) | {r['asr_per_model'][m] * n:.0f} | "
                       f"{r['lpips']:.3f} | {_within(r, n)} | "
                       f"{r['natural_success'] * n:.0f} | {r['passes_per_image']:.0f} | "
                       f"`{_row_commit(r, doc) or '-'}` |")
    if not out:
        return ""
    intro = ("The frontier measured so far (`benchmarks/strength.py`, cross-arch protocol; each "
             "row at the commit of its table, so rows of different commits may differ by an "
             "image or two from a rerun):\n")
    return "\n".join([intro, *out])


def _within(row: dict, n: int) -> str:
    """Images within every limit; a row measured before reshaped structure was a measure
    says it counted four."""
    count = f"{row['within_limits'] * n:.0f}"
    return count if "structure_change" in row else f"{count} (four measures)"


def _row_commit(row: dict, doc: dict) -> str | None:
    """The commit a row was measured at: its own run's, for a row reused from an earlier one
    (``--baseline-from``), else its table's."""
    found = re.search(r"at commit `([0-9a-f]+)`", row.get("measured_by", ""))
    return found[1] if found else _commit_of(doc)


def _commit_of(doc: dict) -> str | None:
    """The commit whose code made a table's results, if named: the generate phase's where the
    attacks ran apart from the scoring (on a GPU), else the table's command's."""
    meta = doc["meta"]
    found = re.search(r"at commit `([0-9a-f]+)`", meta.get("generate_command") or meta["command"])
    return found[1] if found else None


def gpu_sentence() -> str:
    """What the attacks cost and gave on a GPU, from the gpu-strength tables, with the commit
    whose defaults they ran (the CPU tables may be of a later default)."""
    parts = []
    for stem in ("gpu-strength-cross-arch-sample", *_derived_sets("cross-arch", prefix="gpu-")):
        doc = _load(stem)
        if not doc:
            continue
        by = {r["config"]: r for r in doc["rows"]}
        cpu = {r["config"]: r for r in (_load(stem.removeprefix("gpu-")) or {"rows": []})["rows"]}
        if "natural" not in by:
            continue
        m, n = doc["meta"]["eval_models"][0], doc["meta"]["n_images"]
        g = by["natural"]
        text = (f"{doc['meta']['input']} ({n} images): {g['seconds_per_image']:.2f} s per image "
                f"(model loading included), fooling {m} on {g['asr_per_model'][m] * n:.0f}")
        if "natural" in cpu:
            cpu_doc = _load(stem.removeprefix("gpu-"))
            at = (f" at `{c}`" if (c := _commit_of(cpu_doc)) and c != _commit_of(doc) else "")
            text += (f" (the 2-core CPU{at}: {cpu['natural']['seconds_per_image']:.1f} s per "
                     "image)")
        parts.append(text)
    if not parts:
        return ""
    sample = _load("gpu-strength-cross-arch-sample")
    meta = sample["meta"]
    device = meta["device"].split(";")[0].removeprefix("generate on ")
    commit = _commit_of(sample)
    when = f"the defaults of commit `{commit}`" if commit else "the default settings"
    return (f"Measured with {when} (`-b 8`, cross-arch models; "
            f"`benchmarks/strength.py --phase generate`, {device}): "
            + "; ".join(parts) + ". See the `gpu-strength` tables in "
            "[benchmarks/RESULTS.md](benchmarks/RESULTS.md).")


def lpips_cost_sentence() -> str:
    doc = _load("lpips_cost-cpu")
    if not doc:
        return ""
    t = {r["net"]: r["ms_per_pair"] for r in doc["timing"]}
    text = (f"Measured (`benchmarks/lpips_cost.py`, 2-core CPU, 500x500): AlexNet "
            f"{t['alex']:.0f} ms per pair, VGG {t['vgg']:.0f} ms ({t['vgg'] / t['alex']:.1f}x)")
    if doc["means"]:
        pairs = "; ".join(f"{r['results']} {r['alex']:.3f} vs {r['vgg']:.3f}" for r in doc["means"])
        text += f"; mean LPIPS alex vs vgg on the sample set: {pairs}"
    return text + ". The default stays AlexNet for its cost; add `vgg` when it matters."


def _fill(text: str, name: str, body: str) -> str:
    block = f"<!-- {name}:start -->\n{body}\n<!-- {name}:end -->"
    return re.sub(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", lambda m: block, text,
                  flags=re.S)


def update_readme() -> None:
    readme = ROOT / "README.md"
    text = _fill(readme.read_text(), "results", readme_summary())
    text = _fill(text, "failure-policy", failure_policy_table())
    text = _fill(text, "presets", presets_table())
    text = _fill(text, "frontier", frontier_table())
    text = _fill(text, "lpips-cost", lpips_cost_sentence())
    text = _fill(text, "gpu", gpu_sentence())
    readme.write_text(_fill(text, "quickstart", quickstart_sentence()))


def main() -> None:
    tables = sorted(RESULTS.glob("*.md"))
    # By section, then the main table of a section before its follow-ups (shorter name first).
    ranked = sorted(tables, key=lambda p: (next(
        (i for i, key in enumerate(ORDER) if p.stem.startswith(key)), len(ORDER)), len(p.stem)))
    body = "\n".join(p.read_text() for p in ranked)
    out = ROOT / "benchmarks" / "RESULTS.md"
    out.write_text(HEADER + "\n" + body)
    update_readme()
    print(f"wrote {out} from {len(ranked)} tables, and the README summary")


if __name__ == "__main__":
    main()
