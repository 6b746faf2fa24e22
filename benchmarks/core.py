"""Core benchmark: the cost of apply / save / load, and the forward-time overhead of a
compressed model against the plain one, for ResNet-20 (CIFAR) and a 4-layer transformer encoder.

Run:  .venv/bin/python benchmarks/core.py

Prints a markdown table and writes it into BENCHMARKS.md's "Core" section (other sections
are kept). Forward ratios are measured side by side: every repeat times the plain model and
each compressed variant back to back on the same input, and the table reports medians.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import compresstune as ct  # noqa: E402

THREADS = 1
COMMAND = ".venv/bin/python benchmarks/core.py"
PLAN = {"sparsity": 0.5, "bits": 4, "rank_fraction": 0.5}
APPLY_AIM_MS = 100.0
FORWARD_AIM = 1.5


# -- models -------------------------------------------------------------------------------------

def resnet20():
    """studies.resnet_cifar.CifarResNet(20) (uint8 input) when present, else an equivalent local build."""
    try:
        from studies.resnet_cifar import CifarResNet as ResNet20

        return ResNet20, lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    except ImportError:
        return _LocalResNet20, lambda n: torch.randn(n, 3, 32, 32)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        short = x[:, :, ::self.stride, ::self.stride]
        if self.pad:
            short = nn.functional.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return torch.relu(out + short)


class _LocalResNet20(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(_Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def encoder():
    def make():
        layer = nn.TransformerEncoderLayer(128, 4, 512, batch_first=True, dropout=0.0)
        return nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)

    return make, lambda n: torch.randn(n, 64, 128)


# -- timing -------------------------------------------------------------------------------------

def _ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def costs(make, make_input) -> dict:
    """Median milliseconds of apply (discovery + SVD + masks), save and load, plus the sizes."""
    model = make().eval()
    plan = ct.CompressionPlan.uniform(model, **PLAN)
    ct.apply(model, plan)  # warm-up: first-call costs of torch.fx and the SVD kernels
    apply_ms = _ms(lambda: ct.apply(model, plan), 7)
    small = ct.apply(model, plan).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.ctz")
        save_ms = _ms(lambda: ct.save(small, path), 5)
        fresh = make()
        load_ms = _ms(lambda: ct.load(path, into=fresh), 5)
        again = ct.load(path, into=fresh).eval()
        x = make_input(4)
        with torch.no_grad():
            diff = float((again(x) - small(x)).abs().max())
        size = os.path.getsize(path)
    factored = sum(lp.rank is not None for lp in plan.layers.values())
    return {"apply": apply_ms, "save": save_ms, "load": load_ms, "size": size, "ref": ct.reference_size(model),
            "diff": diff, "layers": len(plan.layers), "factored": factored, "small": small, "model": model}


def forward_ratios(model: nn.Module, small: nn.Module, make_input, batch: int, repeats: int) -> dict:
    """Forward time of each compressed variant over the plain model's, measured side by side.

    Every repeat times the four variants back to back (in a rotating order, so none always
    runs first), and each variant's ratio is taken against the plain run of the same repeat:
    load from other processes hits both sides of a ratio alike. Reported: the median ratio.
    """
    plain = model.eval()
    small = small.eval()
    squashed = ct.squash(small).eval()
    x = make_input(batch)

    def cached(inp):
        with parametrize.cached():
            small(inp)  # fills the cache; an eval loop pays this once
            start = time.perf_counter()
            small(inp)
            return time.perf_counter() - start

    def timer(fn):
        def run(inp):
            start = time.perf_counter()
            fn(inp)
            return time.perf_counter() - start
        return run

    # "uncached": every forward recomputes Q(M_A * A) @ Q(M_B * B) for every layer.
    variants = {"plain": timer(plain), "uncached": timer(small), "cached": cached, "squashed": timer(squashed)}
    names = list(variants)
    times = {name: [] for name in names}
    with torch.no_grad():
        for fn in variants.values():  # warm-up
            fn(x)
        for r in range(repeats):
            for name in names[r % 4:] + names[:r % 4]:
                times[name].append(variants[name](x) * 1e3)
    ratios = {name: statistics.median(t / p for t, p in zip(times[name], times["plain"])) for name in names[1:]}
    return {"plain_ms": statistics.median(times["plain"]), **ratios}


# -- report -------------------------------------------------------------------------------------

def table(results: dict) -> str:
    lines = [
        "| model | layers (factored) | apply ms | save ms | load ms | packed / fp32 bytes | load max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        c = r["costs"]
        lines.append(f"| {name} | {c['layers']} ({c['factored']}) | {c['apply']:.1f} | {c['save']:.1f} | "
                     f"{c['load']:.1f} | {c['size']:,} / {c['ref']:,} ({c['ref'] / c['size']:.1f}x) | {c['diff']:.1e} |")
    lines += [
        "",
        "| model | batch | plain forward ms | parametrized, uncached | parametrized, `cached()` | squashed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        for batch, f in r["forward"].items():
            lines.append(f"| {name} | {batch} | {f['plain_ms']:.2f} | {f['uncached']:.2f}x | {f['cached']:.2f}x | "
                         f"{f['squashed']:.2f}x |")
    return "\n".join(lines)


def aims(results: dict) -> str:
    out = []
    apply_ms = results["ResNet-20"]["costs"]["apply"]
    verdict = "met" if apply_ms < APPLY_AIM_MS else "missed"
    out.append(f"- Apply under {APPLY_AIM_MS:.0f} ms for ResNet-20: **{verdict}** ({apply_ms:.1f} ms: layer discovery, "
               "the deep copy, the SVDs and the masks; torch.fx tracing runs only for plans with structured pruning).")
    for name, r in results.items():
        f = r["forward"][32]
        verdicts = {k: "met" if f[k] <= FORWARD_AIM else "missed" for k in ("squashed", "cached", "uncached")}
        out.append(f"- {name}, batch 32, compressed forward at most {FORWARD_AIM}x plain: squashed "
                   f"{f['squashed']:.2f}x (**{verdicts['squashed']}**), parametrized under `cached()` "
                   f"{f['cached']:.2f}x (**{verdicts['cached']}**), parametrized uncached {f['uncached']:.2f}x "
                   f"(**{verdicts['uncached']}**).")
    return "\n".join(out)


NOTES = """\
Plan: `CompressionPlan.uniform(model, sparsity=0.5, bits=4, rank_fraction=0.5)`: every
compressible layer pruned to 50 % (unstructured magnitude masks), 4-bit codes, and factored at half
its full rank wherever the two factors hold fewer numbers than the matrix. Forward times are eval
mode under `torch.no_grad()`; each repeat runs plain, parametrized (uncached), parametrized inside
`parametrize.cached()` (after one call that fills the cache) and squashed back to back on the same
input in a rotating order; a ratio is the median over repeats of (variant time / plain time in the
same repeat). The machine is shared: compare ratios, not absolute milliseconds.

What limits the ratios: pruning and fake quantization produce dense float32 weights, so neither
speeds up a dense CPU kernel; compressed forwards can only win through low-rank factorisation
(fewer multiply-adds) and lose through recomputing `Q(M_A * A) @ Q(M_B * B)` on every call when
uncached. At batch 1 that per-call recomputation is comparable to the convolutions themselves, so
uncached parametrized forwards are far slower there; `cached()` removes it. Squashed low-rank
convolutions run a k x k conv to r channels then a 1 x 1 conv: fewer multiply-adds, but two kernel
launches and an extra activation tensor per layer, which is what remains at small spatial sizes.
Inside `nn.TransformerEncoderLayer` the factored matrices are materialised (the fast path reads
`.weight`), so the encoder's squashed forward does the same work as the plain one.

Save is dominated by trying zstd (level 19) and LZMA on every index stream to keep the smallest;
load re-runs `apply` on `into` (discovery, SVDs, masks) before the saved state overwrites it, so it
costs about one apply plus decoding."""


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(body: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace the "## Core" section of BENCHMARKS.md (creating the file if needed), keep the rest."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nResults of the scripts in `benchmarks/`.\n"
    section = f"## Core\n\n{body.strip()}\n"
    match = re.search(r"^## Core\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if match:
        text = text[:match.start()] + section + ("\n" if match.end() < len(text) else "") + text[match.end():]
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    results = {}
    for name, (make, make_input) in {"ResNet-20": resnet20(), "Transformer encoder (4 x d128, seq 64)": encoder()}.items():
        c = costs(make, make_input)
        forward = {batch: forward_ratios(c["model"], c["small"], make_input, batch, repeats)
                   for batch, repeats in ((1, 60), (32, 20))}
        results[name] = {"costs": c, "forward": forward}
    report = table(results)
    summary = aims(results)
    elapsed = time.perf_counter() - start
    machine = (f"{os.cpu_count()} logical cores ({_cpu_name()}), torch {torch.__version__}, "
               f"`torch.set_num_threads({THREADS})`, Python {platform.python_version()}, "
               f"load average {load:.1f} at start (shared machine)")
    body = "\n\n".join([
        f"Command: `{COMMAND}` (took {elapsed:.0f} s)  \nDate: {dt.date.today().isoformat()}  \nMachine: {machine}",
        report, "Aims:\n\n" + summary, NOTES,
    ])
    print(report)
    print()
    print(summary)
    write_section(body)


if __name__ == "__main__":
    main()
