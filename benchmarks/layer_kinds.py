"""Layer kinds (issue 12): transformers' Conv1D (GPT-2), an LSTM language model, and
factored plans on HF ViT and T5, measured end to end on the compression core.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/layer_kinds.py

Prints markdown tables (nothing is written to BENCHMARKS.md). Every model is built
from a config with random initialisation (seeded; nothing is downloaded), so the
numbers measure sizes and numerical agreement, not accuracy:

1. GPT-2 (``GPT2LMHeadModel``, n_layer=2, n_embd=128, n_head=4, vocab 50257): every
   ``Conv1D`` is discovered; reference / packed size under a uniform 4-bit plan (the
   plan covers every discovered layer, embeddings included; ``lm_head`` is tied to
   ``wte`` and stored once), with a byte breakdown; ``squash`` against the
   compressed model (max |diff| of the logits).
2. An LSTM language model (Embedding(8000, 256) -> LSTM(256, 256, 2 layers) ->
   Linear(256, 8000)): the 4-bit ratio, ``save`` / ``load`` exactness, ``squash``
   (after no-grad forwards, and right after one training step).
3. HF ViT and T5 from the tiny configs of tests/test_transformers_models.py under a
   factored plan (``CompressionPlan.uniform(rank_fraction=0.25, bits=8)``: a rank on
   every layer where it saves storage): ``squash`` runs and matches.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import transformers  # noqa: E402

import compresstune as ct  # noqa: E402
from compresstune import artifact  # noqa: E402
from compresstune.plan import CompressionPlan  # noqa: E402

transformers.logging.set_verbosity_error()
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/layer_kinds.py"
GPT2_AIM, LSTM_AIM = 7.5, 7.0
RANK_FRACTION, FACTORED_BITS = 0.25, 8


def outputs(model: nn.Module, call) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return call(model)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def byte_breakdown(model: nn.Module, groups) -> dict[str, int]:
    """Payload bytes of the artifact by group (``groups(key) -> label``); the header and
    framing are the rest of ``packed_size``."""
    sizes: dict[str, int] = defaultdict(int)
    for rec, blobs in artifact._records(model):
        sizes[groups(rec["k"])] += sum(len(b) for b in blobs)
    return dict(sizes)


# -- 1. GPT-2 ----------------------------------------------------------------------------------

def gpt2_section() -> list[str]:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=128, n_head=4)  # vocab 50257, n_positions 1024
    model = transformers.GPT2LMHeadModel(config).eval()
    conv1d = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    found = ct.discover(model)
    discovered = [n for n in conv1d if n in found.layers and found.layers[n].kind == "transposed_linear"]
    plan = CompressionPlan.uniform(model, bits=4)
    t0 = time.perf_counter()
    small = ct.apply(model, plan)
    apply_s = time.perf_counter() - t0
    ref, packed = ct.reference_size(model), ct.packed_size(small)
    ratio = ref / packed

    def group(key: str) -> str:
        if key.startswith("transformer.wte."):
            return "wte (tied lm_head)"
        if key.startswith("transformer.wpe."):
            return "wpe"
        if ".parametrizations." in key:
            return "Conv1D weights"
        return "biases + LayerNorm (float32)"

    parts = byte_breakdown(small, group)
    wte = found.layers["transformer.wte"]
    wte_bits = parts["wte (tied lm_head)"] * 8 / wte.numel
    # What the ratio would be with the embedding matrices left out of the measure, for the record only.
    emb_params = sum(found.layers[n].numel for n in ("transformer.wte", "transformer.wpe"))
    emb_bytes = parts["wte (tied lm_head)"] + parts["wpe"]
    rest_ratio = (ref - 4 * emb_params) / (packed - emb_bytes)

    torch.manual_seed(1)
    x = torch.randint(0, config.vocab_size, (2, 32))
    call = lambda m: m(x, use_cache=False).logits  # noqa: E731
    y = outputs(small, call)
    plain = ct.squash(small)
    diff = max_diff(outputs(plain, call), y)
    vs_plain = max_diff(outputs(model, call), y)

    rows = [
        f"| `Conv1D` modules / discovered as `transposed_linear` | {len(conv1d)} / {len(discovered)} | all | "
        f"{'met' if len(conv1d) == len(discovered) else 'MISSED'} |",
        f"| discovered layers (plan entries) | {len(found.layers)} (+ alias `lm_head` -> "
        f"`{found.canonical('lm_head')}`) | | |",
        f"| reference size (fp32, unique tensors) | {ref:,} B | | |",
        f"| packed size, uniform 4-bit (embeddings included) | {packed:,} B | | |",
        f"| **ratio** reference / packed | **{ratio:.2f}x** | >= {GPT2_AIM}x | "
        f"{'met' if ratio >= GPT2_AIM else 'MISSED'} |",
        f"| bytes: wte (50257 x 128, tied lm_head, 4-bit + fp32 scale per row) | {parts['wte (tied lm_head)']:,} B "
        f"({wte_bits:.2f} bits/weight) | | |",
        f"| bytes: wpe (1024 x 128, 4-bit) | {parts['wpe']:,} B | | |",
        f"| bytes: 8 Conv1D weights (4-bit) | {parts['Conv1D weights']:,} B | | |",
        f"| bytes: biases + LayerNorm (float32) | {parts['biases + LayerNorm (float32)']:,} B | | |",
        f"| header + framing | {packed - sum(parts.values()):,} B | | |",
        f"| ratio without the two embeddings (for the record) | {rest_ratio:.2f}x | | |",
        f"| `squash` vs compressed: max abs diff of logits (2 x 32 tokens) | {diff:.2e} | <= 1e-5 | "
        f"{'met' if diff <= 1e-5 else 'MISSED'} |",
        f"| (compressed vs uncompressed logits, for scale) | {vs_plain:.2e} | | |",
        f"| `apply` time | {apply_s * 1000:.0f} ms | | |",
    ]
    return rows


# -- 2. LSTM language model ---------------------------------------------------------------------

class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int = 8000, embed: int = 256, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        return self.out(self.rnn(self.emb(tokens))[0])


def lstm_section() -> list[str]:
    torch.manual_seed(0)
    model = LSTMLanguageModel().eval()
    found = ct.discover(model)
    small = ct.apply(model, CompressionPlan.uniform(model, bits=4))
    ref, packed = ct.reference_size(model), ct.packed_size(small)
    ratio = ref / packed

    def group(key: str) -> str:
        if ".parametrizations." in key:
            return key.split(".")[0] + (" weights" if key.startswith("rnn.") else "")
        return "biases (float32)"

    parts = byte_breakdown(small, group)
    torch.manual_seed(1)
    x = torch.randint(0, 8000, (4, 35))
    call = lambda m: m(x)  # noqa: E731
    y = outputs(small, call)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lstm.ctz")
        written = ct.save(small, path)
        on_disk = os.path.getsize(path)
        torch.manual_seed(123)  # a fresh model with other random weights
        again = ct.load(path, into=LSTMLanguageModel())
    load_diff = max_diff(outputs(again, call), y)
    squash_diff = max_diff(outputs(ct.squash(small), call), y)
    after_step = squash_after_a_training_step(small, call)
    rnn = found.layers["rnn"]
    exact = on_disk == written == packed
    return [
        f"| discovered | {', '.join(f'`{n}` ({i.kind})' for n, i in found.layers.items())}; `rnn` holds "
        f"{len(rnn.matrices)} matrices | | |",
        f"| reference size (fp32) | {ref:,} B | | |",
        f"| packed size, uniform 4-bit | {packed:,} B | | |",
        f"| **ratio** reference / packed | **{ratio:.2f}x** | >= {LSTM_AIM}x | {'met' if ratio >= LSTM_AIM else 'MISSED'} |",
        "| payload bytes by part | " + ", ".join(f"{k} {v:,}" for k, v in sorted(parts.items())) + " | | |",
        f"| `save`: file size == `packed_size` | {on_disk:,} == {packed:,} | equal | {'met' if exact else 'MISSED'} |",
        f"| `load` into a fresh model: max abs diff of logits (4 x 35 tokens) | {load_diff:.1e} | 0 | "
        f"{'met' if load_diff == 0 else 'MISSED'} |",
        f"| `squash` vs compressed: max abs diff of logits | {squash_diff:.2e} | <= 1e-5 | "
        f"{'met' if squash_diff <= 1e-5 else 'MISSED'} |",
        f"| `squash` right after one training step (forward + backward with grad on; extra check) | {after_step} | runs | "
        f"{'met' if after_step.startswith('max') else 'MISSED'} |",
    ]


def squash_after_a_training_step(small: nn.Module, call) -> str:
    """A search fine-tunes then squashes: the recurrent forward must not leave the model un-copyable."""
    small.train()
    call(small).float().logsumexp(-1).mean().backward()
    small.eval()
    try:
        plain = ct.squash(small)
    except RuntimeError as exc:
        return f"fails: RuntimeError `{str(exc).split('.')[0]}`"
    return f"max abs diff {max_diff(outputs(plain, call), outputs(small, call)):.2e}"


# -- 3. ViT and T5, factored ----------------------------------------------------------------------

def vit():
    config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3)
    return transformers.ViTForImageClassification(config).eval()


def t5():
    config = transformers.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                   num_heads=2, decoder_start_token_id=0, use_cache=False)
    return transformers.T5ForConditionalGeneration(config).eval()


def factored_rows() -> list[str]:
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 99, (2, 8), generator=torch.Generator().manual_seed(0))
    cases = {
        "ViT (`ViTForImageClassification`, hidden 32, 2 layers, 16x16 images, patch 4)":
            (vit, lambda m: m(pixels).logits),
        "T5 (`T5ForConditionalGeneration`, d_model 32, 2+2 layers, vocab 99)":
            (t5, lambda m: m(input_ids=tokens, decoder_input_ids=tokens, use_cache=False).logits),
    }
    rows = []
    for label, (factory, call) in cases.items():
        torch.manual_seed(0)
        model = factory()
        found = ct.discover(model)
        plan = CompressionPlan.uniform(model, rank_fraction=RANK_FRACTION, bits=FACTORED_BITS)
        ranked = sum(lp.rank is not None for lp in plan.layers.values())
        small = ct.apply(model, plan)
        ratio = ct.reference_size(model) / ct.packed_size(small)
        y = outputs(small, call)
        plain = ct.squash(small).eval()
        factored = defaultdict(int)
        for m in plain.modules():
            if type(m).__name__.startswith("Factored"):
                factored[type(m).__name__] += 1
        diff = max_diff(outputs(plain, call), y)
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(factored.items()))
        # A factored weight that is tied (T5's shared embedding) stays one matrix in the squashed model.
        kept = [n for n, lp in plan.layers.items() if lp.rank is not None
                and not type(plain.get_submodule(found.layers[n].module_name)).__name__.startswith("Factored")]
        if kept:
            kinds += "; materialised as one matrix: " + ", ".join(
                f"`{n}` (tied to {', '.join(f'`{a}`' for a in found.layers[n].aliases)})"
                if found.layers[n].aliases else f"`{n}`" for n in kept)
        rows.append(f"| {label} | {ranked} / {len(found.layers)} | {kinds} | {ratio:.2f}x | {diff:.2e} | "
                    f"{'met' if diff <= 1e-5 else 'MISSED'} |")
    return rows


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPU cores ({cpu}), no GPU; torch {torch.__version__}, transformers "
            f"{transformers.__version__}, Python {platform.python_version()}")


def main() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    header = "| measure | value | aim | |\n|---|---|---|---|"
    print("Models built from configs with random initialisation (seeded); nothing downloaded.\n")
    print("#### GPT-2 (transformers `Conv1D`), n_layer=2, n_embd=128, n_head=4, vocab 50257\n")
    print(header)
    print("\n".join(gpt2_section()))
    print("\n#### LSTM language model: Embedding(8000, 256) -> LSTM(256, 256, 2 layers) -> Linear(256, 8000)\n")
    print(header)
    print("\n".join(lstm_section()))
    print(f"\n#### Factored plan (`CompressionPlan.uniform(model, rank_fraction={RANK_FRACTION}, "
          f"bits={FACTORED_BITS})`), then `squash`\n")
    print("| model | layers with a rank / discovered | squashed into | ratio | max abs diff squash vs compressed "
          "| aim <= 1e-5 |\n|---|---|---|---|---|---|")
    print("\n".join(factored_rows()))
    print(f"\nMachine: {machine()}. Total {time.perf_counter() - t0:.1f} s. Command: `{COMMAND}`")


if __name__ == "__main__":
    main()
