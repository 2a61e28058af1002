"""Time per optimisation step against the raw ensemble forward+backward on the same batch.

The reference is what no attack can avoid: the attack ensemble's forward pass on a batch at
the working size, the loss, and the backward pass to the input. A step adds the perturbation
families, input diversity, the momentum update and the projection. What the loop computes
once per batch (``Composite.prepare``: the first family's input-only constants) is done
before timing, as the loop does it once for 100 steps. The raw pass is also timed with and
without BatchNorm folded into the convolutions (``create_classifier``'s default), so what the
folding saves is on record; the step ratios are against the folded, faster pass.

Each row also counts the operators a raw pass and a step dispatch (views left out). Off the
CPU each is at least one kernel launch, and at the batch sizes a GPU is given the launches,
not the arithmetic, set a step's time: on an H200 the time ratios tracked the count ratios.
``--device meta`` counts them on the GPU's code paths without a GPU (and without data: any
host sync in a step fails there), and skips the timing; there, operators on CPU tensors
alone (the augmentations' per-image random draws) are host work with no kernel, counted
apart. A step's count moves by a few operators with its input-diversity draws (each image
resized and padded, or not).

    python benchmarks/step_overhead.py --batch-sizes 4,16
    python benchmarks/step_overhead.py --device meta --batch-sizes 4
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import time

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from _common import command_line, device_line, write_result
from unrestrict.attack import PRESETS, Attack, AttackConfig, margin_loss, pad_rows
from unrestrict.generate import GenerateConfig
from unrestrict.models import create_ensemble
from unrestrict.process import keep_freed_memory

MODELS = ("efficientnet_lite0", "mobilenet_v2")
CPU_CHUNK = GenerateConfig().cpu_batch
SETTINGS = {
    "texture": AttackConfig(families=("texture",)),
    "color": AttackConfig(families=("color",)),
    "default (texture+color)": AttackConfig(),
    # The CLI's default: its texture options add per-step work (the overshoot bound).
    "natural preset": PRESETS["natural"],
    "default, texture lowcut 8": AttackConfig(family_options={"texture": {"lowcut": 8.0}}),
    "default, 2 copies": AttackConfig(copies=2),
    "default, exact gradients": AttackConfig(sgm_gamma=1.0, relu_width=0.0),
    "style": AttackConfig(families=("style",)),
    "geometry": AttackConfig(families=("geometry",)),
    "pixel (full 500x500)": AttackConfig(families=("pixel",), work_size=0),
}


def raw_step(ens: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """What every attack pays: ensemble forward, loss, backward to the input."""
    xi = x.detach().requires_grad_(True)
    margin_loss(ens(xi), y).sum().backward()


# Operators that only make a new view of a tensor's storage: no kernel on any device.
VIEW_OPS = frozenset({"view", "_unsafe_view", "reshape", "transpose", "t", "permute", "expand",
                      "slice", "select", "unsqueeze", "squeeze", "unbind", "split",
                      "split_with_sizes", "alias", "as_strided", "detach", "lift_fresh"})


class _Dispatches(TorchDispatchMode):
    """Counts the ATen operators dispatched inside it, views left out: ``count`` all of them,
    ``host`` those on CPU tensors alone (off the CPU: host work, such as the per-image random
    draws, that launches no kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = self.host = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ not in VIEW_OPS:
            self.count += 1
            tensors = [t for t in pytree.tree_leaves((args, kwargs, out))
                       if isinstance(t, torch.Tensor)]
            self.host += all(t.device.type == "cpu" for t in tensors)
        return out


def dispatches(fn) -> tuple[int, int]:
    """Operators (not views) one call of ``fn`` dispatches, and how many of them ran on CPU
    tensors alone."""
    with _Dispatches() as mode:
        fn()
    return mode.count, mode.host


def _once(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def timed_pair(a, b, repeats: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Times of a and b, measured alternately so that machine drift hits both alike.

    On a shared CPU the same kernel's time can swing by 2x between calls; interleaving keeps
    the ratio honest, and pairs (a[i], b[i]) ran back to back for the paired ratio.
    """
    for _ in range(2):
        a()
        b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_once(a, device))
        tb.append(_once(b, device))
    return ta, tb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="4,16")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--only", default=None,
                    help="comma-separated subset of the step settings (by their labels)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda, cpu, or meta (operator counts only, on the GPU's code paths)")
    args = ap.parse_args()
    kept = keep_freed_memory()  # as the CLI does; without it page faults dominate the noise
    device = torch.device(args.device)
    if device.type == "meta":
        return count_only(args, device)
    settings = SETTINGS
    if args.only:
        wanted = re.split(r",(?=\S)", args.only)
        if unknown := [k for k in wanted if k not in SETTINGS]:
            ap.error(f"unknown setting(s) {unknown}; known: {list(SETTINGS)}")
        settings = {k: SETTINGS[k] for k in wanted}
    ens = create_ensemble(MODELS, device)
    unfolded = create_ensemble(MODELS, device, fold_bn=False)
    default = Attack(AttackConfig(), ens, device=device)  # for its surrogate gradients
    rows, fold_rows, alone_rows = [], [], []
    for b in (int(v) for v in args.batch_sizes.split(",")):
        gen = torch.Generator().manual_seed(0)
        full = torch.rand(b, 3, 500, 500, generator=gen).to(device)
        y = torch.randint(0, 1000, (b,), generator=gen).to(device)
        # What folding BatchNorm into the convolutions (create_classifier's default) saves on
        # the raw pass itself, at the default working size; every ratio below is against
        # the folded, faster raw pass.
        x = torch.nn.functional.interpolate(full, size=(ens.max_input_size,) * 2,
                                            mode="bicubic", antialias=True).clamp(0, 1)
        batched = functools.partial(raw_step, ens, x, y)

        def one_by_one(x=x, y=y):  # what generate --cpu-batch 1 does
            for i in range(len(x)):
                raw_step(ens, x[i:i + 1], y[i:i + 1])

        def in_chunks(x=x, y=y, k=CPU_CHUNK):  # what generate does on the CPU by default
            for i in range(0, len(x), k):
                raw_step(ens, pad_rows(x[i:i + k], k), pad_rows(y[i:i + k], k))

        def surrogate_pass(x=x, y=y):
            with default.surrogate():
                raw_step(ens, x, y)

        for label, (ka, kb), other in (
            ("raw pass, BatchNorm not folded", ("folded_s", "unfolded_s"),
             functools.partial(raw_step, unfolded, x, y)),
            ("raw pass, the default's surrogate gradients", ("batched_s", "alone_s"),
             surrogate_pass),
            ("raw pass, images one by one", ("batched_s", "alone_s"), one_by_one),
            (f"raw pass, chunks of {CPU_CHUNK}", ("batched_s", "alone_s"), in_chunks),
        ):
            ta, tb = timed_pair(batched, other, args.repeats, device)
            row = {"batch": b, "family": label, "work_size": x.shape[-1],
                   ka: statistics.median(ta), kb: statistics.median(tb),
                   "ratio": statistics.median(tb) / statistics.median(ta)}
            (fold_rows if ka == "folded_s" else alone_rows).append(row)
            print(f"b={b:>3} {label}: {ka[:-2]} {row[ka] * 1e3:7.1f} ms, {kb[:-2]} "
                  f"{row[kb] * 1e3:7.1f} ms", flush=True)
        for name, cfg in settings.items():
            attack = Attack(cfg, ens, device=device)
            x = _working_input(attack, full)
            raw, step = _step_pair(attack, ens, x, y)
            ops_raw, ops_step = dispatches(raw)[0] * cfg.copies, dispatches(step)[0]
            ta, tb = timed_pair(raw, step, args.repeats, device)
            # A step with k augmented copies makes k raw passes; it is held to k times one.
            ta = [t * cfg.copies for t in ta]
            t_raw, t_step = statistics.median(ta), statistics.median(tb)
            rows.append({"batch": b, "family": name, "work_size": x.shape[-1],
                         "copies": cfg.copies, "raw_s": t_raw, "step_s": t_step,
                         "ratio": t_step / t_raw,
                         "ratio_paired": statistics.median(
                             [sb / sa for sa, sb in zip(ta, tb, strict=True)]),
                         "ops_raw": ops_raw, "ops_step": ops_step})
            print(f"b={b:>3} {name:>24}: raw {t_raw * 1e3:7.1f} ms  step {t_step * 1e3:7.1f} ms"
                  f"  x{t_step / t_raw:.3f}  (paired x{rows[-1]['ratio_paired']:.3f}); "
                  f"ops {ops_raw} -> {ops_step}", flush=True)
    md = ["### Step overhead: one optimisation step vs the raw ensemble forward+backward\n",
          f"Device: {device_line()}; torch threads {torch.get_num_threads()}  ",
          f"Command: {command_line()}  ",
          f"glibc keeps freed memory: {kept} (as in the CLI). "
          f"Ensemble {' + '.join(MODELS)}; medians of {args.repeats} raw and {args.repeats} "
          "attack steps, measured alternately after 2 warm-ups of each. `ratio` divides the "
          "medians; `paired ratio` is the median of each step's time over the raw pass "
          "timed just before it, which cancels the slow drift of a shared machine better "
          "(identical code has measured anywhere from 1.03x to 1.15x by `ratio` on this "
          "machine on different runs)."
          " Raw = ensemble forward, margin loss, backward to the input, at the same working "
          "size, times the number of augmented copies the step makes (`copies`), with the "
          "setting's own surrogate gradients (they change the models' backward pass, not "
          "the loop; what they cost over exact gradients is a row of the last table). The "
          "per-batch `Composite.prepare` (input-only constants such as the texture family's "
          "visibility maps, computed once for all of a batch's steps) is outside the timed "
          "step. At full size (texture, pixel) the raw pass resizes 500x500 to each member's "
          "input; a step resizes once, to the largest member's, before the augmentations, so "
          "it can cost less than the raw pass. The per-stage `Box` (each parameter's "
          "bounds at the stage's budget) is built outside the timed step too, as the loop "
          "builds it once per stage. `ops`: operators dispatched (views left out) by the raw "
          "passes and by the step, each at least one kernel launch off the CPU. "
          "Target: ratio <= 1.10.\n",
          "| batch | family | working size | copies | raw x copies (ms) | step (ms) | ratio | "
          "paired ratio | ops raw x copies | ops step | ops ratio |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['batch']} | {r['family']} | {r['work_size']} | {r['copies']} | "
           f"{r['raw_s'] * 1e3:.1f} | {r['step_s'] * 1e3:.1f} | {r['ratio']:.3f} | "
           f"{r['ratio_paired']:.3f} | {r['ops_raw']} | {r['ops_step']} | "
           f"{r['ops_step'] / r['ops_raw']:.3f} |" for r in rows]
    md += ["", "Raw pass with BatchNorm folded into the convolutions (the default, used above) "
           "and without, measured alternately in the same way:\n",
           "| batch | working size | folded (ms) | not folded (ms) | not folded / folded |",
           "|---|---|---|---|---|"]
    md += [f"| {r['batch']} | {r['work_size']} | {r['folded_s'] * 1e3:.1f} | "
           f"{r['unfolded_s'] * 1e3:.1f} | {r['ratio']:.3f} |" for r in fold_rows]
    md += ["", "Raw pass on a whole batch against the same images one at a time (what "
           f"`generate --cpu-batch 1` does), in padded chunks of {CPU_CHUNK} (what "
           "`generate` does on the CPU by default, whatever `-b` is), and with the default's "
           "surrogate gradients (skip-gradient and smooth rectifiers) in place of exact ones, "
           "measured alternately in the same way:\n",
           "| batch | how | working size | batched (ms) | that way (ms) | that way / batched |",
           "|---|---|---|---|---|---|"]
    md += [f"| {r['batch']} | {r['family'].removeprefix('raw pass, ')} | {r['work_size']} | "
           f"{r['batched_s'] * 1e3:.1f} | {r['alone_s'] * 1e3:.1f} | {r['ratio']:.3f} |"
           for r in alone_rows]
    tag = "step_overhead-" + ("gpu" if device.type == "cuda" else "cpu")
    print(f"wrote {write_result(tag, chr(10).join(md) + chr(10), rows + fold_rows + alone_rows)}")


def _working_input(attack: Attack, full: torch.Tensor) -> torch.Tensor:
    """``full`` at ``attack``'s working size, as the loop makes it."""
    ws = attack.work_size()
    return full if ws is None else torch.nn.functional.interpolate(
        full, size=(ws, ws), mode="bicubic", antialias=True).clamp(0, 1)


def _step_pair(attack: Attack, ens: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The raw passes and one attack step of ``attack`` on ``x`` (at its working size), as
    two callables; what the loop computes once per batch or stage is computed here."""
    b, device = x.shape[0], x.device
    params = attack.composite.init_params(x)
    prepared = attack.composite.prepare(x)
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    strength = torch.full((b,), 0.5, device=device)
    idx = torch.arange(b, device=device)
    g = [torch.Generator().manual_seed(i) for i in range(b)]
    box = attack.box(params, strength)

    def raw():  # with the setting's own model gradients
        with attack.surrogate():
            raw_step(ens, x, y)

    def step():
        with attack.surrogate():  # as run() does
            attack._step(x, params, velocity, y, idx, strength, g, prepared, None, box)

    raw()  # cached constants are built on the first call
    step()
    return raw, step


def count_only(args: argparse.Namespace, device: torch.device) -> None:
    """The operator counts alone, on ``device`` (meta: the GPU's code paths, no data)."""
    ens = create_ensemble(MODELS, torch.device("cpu")).to(device)
    rows = []
    for b in (int(v) for v in args.batch_sizes.split(",")):
        full = torch.rand(b, 3, 500, 500, device=device)
        y = torch.randint(0, 1000, (b,), device=device)
        for name, cfg in SETTINGS.items():
            attack = Attack(cfg, ens, device=device)
            x = _working_input(attack, full)
            raw, step = _step_pair(attack, ens, x, y)
            (ops_raw, raw_host), (ops_step, host) = dispatches(raw), dispatches(step)
            rows.append({"batch": b, "family": name, "work_size": x.shape[-1],
                         "copies": cfg.copies, "ops_raw": (ops_raw - raw_host) * cfg.copies,
                         "ops_step": ops_step - host, "ops_host": host})
            r = rows[-1]
            print(f"b={b:>3} {name:>24}: ops {r['ops_raw']} -> {r['ops_step']} "
                  f"x{r['ops_step'] / r['ops_raw']:.3f} (+{host} on the host)", flush=True)
    md = ["### Step overhead in operators: one optimisation step vs the raw ensemble "
          "forward+backward\n",
          f"Device: {device.type} (no data: the code paths a GPU takes, counted without "
          f"one); torch {torch.__version__}  ",
          f"Command: {command_line()}  ",
          f"Ensemble {' + '.join(MODELS)}. Operators dispatched on the device (views left "
          "out) by the raw passes (times the copies a step makes) and by one attack step, "
          "counted after a warm-up (a step's count moves by a few operators with its "
          "input-diversity draws); what the loop computes once per batch or stage (the "
          "families' prepared constants, the per-stage `Box`) is outside the step, as in the "
          "timed table. On a GPU each is at least one kernel launch, and at the batch sizes "
          "it is given the launches set the time: on an H200 the time ratios of "
          "`step_overhead-gpu` tracked these. `host ops`: the step's operators on CPU "
          "tensors alone (the augmentations' random draws, about one per image), host "
          "work that launches no kernel, left out of the ratio. Target: ratio <= 1.10.\n",
          "| batch | family | working size | copies | ops raw x copies | ops step | ratio | "
          "host ops |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['batch']} | {r['family']} | {r['work_size']} | {r['copies']} | "
           f"{r['ops_raw']} | {r['ops_step']} | {r['ops_step'] / r['ops_raw']:.3f} | "
           f"{r['ops_host']} |" for r in rows]
    print(f"wrote {write_result('step_overhead-ops', chr(10).join(md) + chr(10), rows)}")


if __name__ == "__main__":
    main()
