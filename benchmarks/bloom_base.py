"""The bloom-560m-shaped base model the benchmarks share, built once under a bench directory.

hidden 1024, 24 layers, 16 heads, vocab 250,880 (bloom-560m's shape); random fp32 weights
(about 2.2 GB) and the toy byte-level BPE tokenizer, since the real one cannot be downloaded here.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

SHAPE = {"hidden_size": 1024, "n_layer": 24, "n_head": 16, "vocab_size": 250_880}
QUICK_SHAPE = {"hidden_size": 64, "n_layer": 2, "n_head": 4, "vocab_size": 400}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_bloom_base(bench_dir: Path, quick: bool = False) -> Path:
    """The base under ``bench_dir`` (built on first use, then reused); ``quick`` is a hidden-64 toy."""
    base = bench_dir / ("bloom-tiny-shape" if quick else "bloom-560m-shape")
    if (base / "model.safetensors").is_file():
        return base
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    from registry.demo import toymodels

    shape = QUICK_SHAPE if quick else SHAPE
    log(f"building the base under {base} (once)...")
    t = time.perf_counter()
    tmp = bench_dir / f".building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    toymodels.train_tokenizer(tmp)
    config = BloomConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"], n_layer=shape["n_layer"],
        n_head=shape["n_head"], bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(0)
    model = BloomForCausalLM(config).eval()
    model.save_pretrained(str(tmp))
    del model
    shutil.rmtree(base, ignore_errors=True)
    os.replace(tmp, base)
    log(f"  built in {time.perf_counter() - t:.1f} s")
    return base
