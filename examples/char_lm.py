"""A character-level language model on the Python standard library's own source, trained with truncated
backpropagation through time, gradient clipping and temperature sampling: fastrnn as a drop-in for torch.nn,
and fastrnn's options beyond torch.nn (layer norm, zoneout).

    python examples/char_lm.py                              # fastrnn.LSTM, a few minutes on 2 CPU cores
    python examples/char_lm.py --impl torch                 # the same model on torch.nn.LSTM
    python examples/char_lm.py --compare                    # both, and the ratio of their times per epoch
    python examples/char_lm.py --layer-norm --zoneout 0.1   # fastrnn.LSTM(..., layer_norm=True, zoneout=0.1)
    python examples/char_lm.py --smoke --out /tmp/charlm    # seconds; loss_curve.png + losses.json there

The swap is one line (see make_model): `fastrnn.LSTM(E, H)` where the model had `torch.nn.LSTM(E, H)`;
state_dict, hidden state layout and everything else stay torch.nn's. torch.nn has no layer norm and no zoneout,
so `--impl torch` with those options runs what a user writes without fastrnn: the hand-written Python loop of
fastrnn.bench.handwritten (the benchmark's peer), with the same parameters and equations.

The corpus is on every machine, offline: the .py files at the top of the standard library's directory
(os.path.dirname(os.__file__)), in sorted order, concatenated up to --corpus-bytes. The last 5% is held out
for the validation loss.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import fastrnn  # noqa: F401
except ImportError:  # run from a checkout (an in-place build) without installing it: the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Sizes: the defaults run in a few minutes on 2 CPU cores (fastrnn); --smoke in seconds.
DEFAULTS = dict(hidden=256, embed=64, bptt=64, batch=32, epochs=4, steps_per_epoch=100, corpus_bytes=1_000_000,
                sample_len=200, lr=3e-3)
SMOKE = dict(hidden=48, embed=16, bptt=16, batch=8, epochs=2, steps_per_epoch=15, corpus_bytes=60_000,
             sample_len=40, lr=1e-2)


# ------------------------------------------------------------------------------------------------- data
def stdlib_corpus(max_bytes: int) -> str:
    """The standard library's top-level .py files, sorted by name, concatenated up to max_bytes characters."""
    root = os.path.dirname(os.__file__)
    parts, size = [], 0
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not name.endswith(".py") or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        parts.append(text[: max_bytes - size])
        size += len(parts[-1])
        if size >= max_bytes:
            break
    if not parts:
        raise SystemExit(f"char_lm: no .py files in {root}")
    return "".join(parts)


class Vocab:
    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index[c] for c in text if c in self.index], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def batchify(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """[N] -> [N // batch, batch]: `batch` contiguous streams side by side, each read in order across chunks
    (so the hidden state carried from one chunk to the next belongs to the text that follows)."""
    n = ids.numel() // batch
    return ids[: n * batch].view(batch, n).t().contiguous()


# ------------------------------------------------------------------------------------------------ model
class CharLM(nn.Module):
    def __init__(self, rnn: nn.Module, vocab: int, embed: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = rnn
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor, state=None):
        out, state = self.rnn(self.embed(x), state)  # x: [T, B] -> [T, B, E] -> [T, B, H]
        return self.head(out), state


def make_model(impl: str, cell: str, vocab: int, embed: int, hidden: int, layer_norm: bool = False,
               zoneout: float = 0.0) -> CharLM:
    opts = {}
    if layer_norm:
        opts["layer_norm"] = True
    if zoneout:
        opts["zoneout"] = zoneout
    if impl == "fastrnn":
        import fastrnn

        rnn = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell](embed, hidden, **opts)  # the drop-in swap
    elif opts:  # torch.nn has no layer norm or zoneout: the hand-written loop a user writes instead
        from fastrnn.bench.handwritten import HandwrittenGRU, HandwrittenLSTM

        rnn = {"lstm": HandwrittenLSTM, "gru": HandwrittenGRU}[cell](embed, hidden, **opts)
    else:
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](embed, hidden)
    return CharLM(rnn, vocab, embed, hidden)


def impl_label(impl: str, layer_norm: bool, zoneout: float) -> str:
    if impl == "fastrnn":
        return "fastrnn"
    return "torch (hand-written loop)" if (layer_norm or zoneout) else "torch.nn"


def detach(state):
    """Truncated BPTT: the state goes on to the next chunk, its history does not."""
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


# --------------------------------------------------------------------------------------------- training
@torch.no_grad()
def evaluate(model: CharLM, data: torch.Tensor, bptt: int, max_chunks: int = 20) -> float:
    model.eval()
    state, total, count = None, 0.0, 0
    for i in range(0, min(data.shape[0] - 1, max_chunks * bptt), bptt):
        x, y = data[i:i + bptt], data[i + 1:i + 1 + bptt]
        x = x[: y.shape[0]]
        logits, state = model(x, state)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def sample(model: CharLM, vocab: Vocab, prime: str, length: int, temperature: float,
           generator: Optional[torch.Generator] = None) -> str:
    """`length` characters after `prime`, each drawn from softmax(logits / temperature) (temperature -> 0:
    greedy; 1: the model's distribution; > 1: flatter)."""
    model.eval()
    ids = vocab.encode(prime) if prime else torch.zeros(1, dtype=torch.long)
    logits, state = model(ids.view(-1, 1))
    out = []
    for _ in range(length):
        last = logits[-1, 0]
        if temperature <= 0:
            nxt = int(last.argmax())
        else:
            probs = torch.softmax(last.double() / temperature, dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]]), state)
    model.train()
    return vocab.decode(out)


def train(impl: str, args, vocab: Vocab, train_data: torch.Tensor, val_data: torch.Tensor) -> Dict[str, object]:
    label = impl_label(impl, args.layer_norm, args.zoneout)
    torch.manual_seed(args.seed)  # the same initial weights for every impl (the drop-ins initialise alike)
    model = make_model(impl, args.cell, len(vocab), args.embed, args.hidden, args.layer_norm, args.zoneout)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"== {label}: {type(model.rnn).__module__}.{type(model.rnn).__name__}({model.rnn.extra_repr()}), "
          f"{sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    losses: List[float] = []
    val_losses: List[float] = []
    epoch_s: List[float] = []
    grad_norms: List[float] = []
    pos, state = 0, None
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        for _ in range(args.steps_per_epoch):
            if pos + args.bptt + 1 > train_data.shape[0]:
                pos, state = 0, None  # wrapped around the corpus: start the streams afresh
            x, y = train_data[pos:pos + args.bptt], train_data[pos + 1:pos + 1 + args.bptt]
            pos += args.bptt
            state = detach(state)
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)))
            opt.step()
            losses.append(loss.item())
        epoch_s.append(time.perf_counter() - t0)
        val_losses.append(evaluate(model, val_data, args.bptt))
        n = args.steps_per_epoch
        print(f"  epoch {epoch}/{args.epochs}: train loss {statistics.fmean(losses[-n:]):.3f}  val loss "
              f"{val_losses[-1]:.3f} ({val_losses[-1] / math.log(2):.2f} bits/char)  {epoch_s[-1]:.2f} s/epoch "
              f"({1e3 * epoch_s[-1] / n:.0f} ms/step)", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    text = sample(model, vocab, args.prime, args.sample_len, args.temperature, gen)
    print(f"  sample (temperature {args.temperature}): {args.prime + text!r}", flush=True)
    return {"impl": impl, "label": label, "train_loss": losses, "val_loss": val_losses, "epoch_s": epoch_s,
            "median_epoch_s": statistics.median(epoch_s), "grad_norm": grad_norms, "sample": text}


# ---------------------------------------------------------------------------------------------- outputs
def write_outputs(out_dir: str, args, runs: List[Dict[str, object]], summary: Dict[str, object]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "losses.json")
    with open(path, "w") as f:
        json.dump({"args": vars(args), "summary": summary, "runs": runs}, f, indent=1)
    print(f"char_lm: wrote {path}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001  an optional dependency
        print(f"char_lm: no loss_curve.png: matplotlib is not importable ({type(exc).__name__}: {exc})")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        steps = range(1, len(r["train_loss"]) + 1)
        line, = ax.plot(steps, r["train_loss"], lw=0.8, alpha=0.8,
                        label=f"{r['label']} train ({r['median_epoch_s']:.2f} s/epoch)")
        ax.plot([args.steps_per_epoch * (e + 1) for e in range(len(r["val_loss"]))], r["val_loss"], "o--",
                color=line.get_color(), label=f"{r['label']} validation")
    ax.set_xlabel("step (BPTT chunk)")
    ax.set_ylabel("cross-entropy (nats/char)")
    opts = (" layer_norm" if args.layer_norm else "") + (f" zoneout={args.zoneout}" if args.zoneout else "")
    ax.set_title(f"char-level {args.cell.upper()}{opts}, H={args.hidden}, bptt={args.bptt}, batch={args.batch}",
                 fontsize=9)
    ax.grid(lw=0.3, alpha=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = os.path.join(out_dir, "loss_curve.png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"char_lm: wrote {png}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", choices=("fastrnn", "torch"), default="fastrnn",
                   help="the recurrent layer: fastrnn's drop-in or torch.nn's (default fastrnn)")
    p.add_argument("--compare", action="store_true",
                   help="run both impls on the same data and seed and print the ratio of their times per epoch")
    p.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    p.add_argument("--layer-norm", action="store_true", help="fastrnn's layer_norm=True (issue 10)")
    p.add_argument("--zoneout", type=float, default=0.0, metavar="P", help="fastrnn's zoneout=P (issue 10)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and few steps (seconds; for CI)")
    for name, kind in (("epochs", int), ("steps-per-epoch", int), ("hidden", int), ("embed", int), ("bptt", int),
                       ("batch", int), ("corpus-bytes", int), ("sample-len", int), ("lr", float)):
        p.add_argument(f"--{name}", type=kind, default=None,
                       help=f"default {DEFAULTS[name.replace('-', '_')]} ({SMOKE[name.replace('-', '_')]} with --smoke)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient clipping: max L2 norm (default 1.0)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    p.add_argument("--prime", default="def ", help="text the sample starts from (default 'def ')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", default=None, metavar="DIR", help="write losses.json and loss_curve.png here")
    args = p.parse_args(argv)
    sizes = SMOKE if args.smoke else DEFAULTS
    for k, v in sizes.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not 0.0 <= args.zoneout < 1.0:
        p.error("--zoneout must be in [0, 1)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    text = stdlib_corpus(args.corpus_bytes)
    vocab = Vocab(text)
    ids = vocab.encode(text)
    split = int(len(ids) * 0.95)
    train_data, val_data = batchify(ids[:split], args.batch), batchify(ids[split:], min(args.batch, 8))
    print(f"char_lm: {len(text):,} characters of the standard library ({os.path.dirname(os.__file__)}), "
          f"vocabulary {len(vocab)}; {args.cell.upper()} H={args.hidden} E={args.embed}, bptt {args.bptt}, "
          f"batch {args.batch}, {args.epochs} epochs x {args.steps_per_epoch} steps; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    impls = ["torch", "fastrnn"] if args.compare else [args.impl]
    runs = [train(impl, args, vocab, train_data, val_data) for impl in impls]
    summary: Dict[str, object] = {r["label"]: {"median_epoch_s": r["median_epoch_s"],
                                               "final_val_loss": r["val_loss"][-1]} for r in runs}
    for r in runs:
        print(f"time per epoch, {r['label']}: {r['median_epoch_s']:.2f} s (median of {len(r['epoch_s'])})")
    if args.compare:
        ref, fast = runs
        ratio = ref["median_epoch_s"] / fast["median_epoch_s"]
        summary["speedup"] = ratio
        print(f"{ref['label']} / fastrnn time per epoch: {ratio:.2f}x")
    if args.out:
        write_outputs(args.out, args, runs, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
