"""The command line: `ember train | tokenizer | generate | chat | export`. The only place that reads argv."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from .config.errors import ConfigError
from .engine.host_memory import prefer_huge_pages

USAGE = """usage: ember COMMAND ...

commands:
  train      train a model: ember train [CONFIG.yaml] [key=value ...] [--key value ...]
  tokenizer  train a BPE tokenizer on a dataset (for training from scratch)
  generate   sample text from a trained model folder
  chat       ask a trained vision-language model about an image
  export     merge a LoRA/QLoRA adapter into its base model
  preview    print the first training samples as the model sees them: ember preview CONFIG.yaml [key=value ...] [--n N] [--json]
  web        serve the page to configure, launch, watch and try runs: ember web [--runs DIR] [--port 7860]
Run `ember COMMAND --help` for the keys of a command."""


def _train(args: list[str]) -> int:
    from .config.checks import check_output_dir
    from .config.help import render_help
    from .config.loader import load_config
    if "--help" in args or "-h" in args:
        print(render_help())
        return 0
    cfg = load_config(args)  # every config error surfaces here, before any model is built
    check_output_dir(cfg.output_dir)
    from .launch import needs_launch, run_torchrun
    if needs_launch(cfg):
        return run_torchrun(cfg, args)
    from .engine.trainer import Trainer
    from .tasks import build_task
    trainer = Trainer(cfg, build_task(cfg))
    result = trainer.fit()
    if not trainer.world.is_main:
        return 0
    print("done: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return 0


def _tokenizer(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ember tokenizer", description="train a byte-level BPE tokenizer")
    parser.add_argument("--dataset", required=True, help="dataset name(s) or path(s), as for ember train")
    parser.add_argument("--dataset_dir", default="data")
    parser.add_argument("--vocab_size", type=int, default=4096)
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument("--output_dir", required=True)
    opts = parser.parse_args(args)
    from .tokenizer import train_tokenizer
    tok = train_tokenizer(opts.dataset, opts.dataset_dir, opts.vocab_size, opts.output_dir, opts.max_samples)
    print(f"wrote a tokenizer of {len(tok)} tokens to {opts.output_dir}")
    return 0


def _generate(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ember generate", description="sample from a trained model folder")
    parser.add_argument("model", help="a folder written by ember train (or any local HF causal LM)")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_k", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args(args)
    import torch
    from .models.hf import load_causal_lm, load_tokenizer
    tokenizer = load_tokenizer(opts.model, "model")
    model = load_causal_lm(opts.model).eval()
    torch.manual_seed(opts.seed)
    ids = tokenizer(opts.prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.bos_token_id or tokenizer.eos_token_id]])
    out = model.generate(ids, max_new_tokens=opts.max_new_tokens, do_sample=opts.temperature > 0,
                         temperature=opts.temperature, top_k=opts.top_k, pad_token_id=tokenizer.pad_token_id)
    print(tokenizer.decode(out[0], skip_special_tokens=True))
    return 0


def _chat(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ember chat", description="ask a trained VLM about an image")
    parser.add_argument("model", help="a VLM folder written by ember train --task vlm")
    parser.add_argument("--image", required=True, help="an image file")
    parser.add_argument("--question", required=True)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    opts = parser.parse_args(args)
    from .chat import VLMChat
    print(VLMChat(opts.model).answer(opts.image, opts.question, opts.max_new_tokens))
    return 0


def _export(args: list[str]) -> int:
    from .config.parse import read_sources
    from .export import export_merged, parse_export_config
    if "--help" in args or "-h" in args:
        print("usage: ember export [CONFIG.yaml] --model_name_or_path BASE --adapter_name_or_path ADAPTER "
              "--export_dir OUT [--export_size GB]\nmerges a LoRA/QLoRA adapter into its base and writes an HF model")
        return 0
    raw = {key: value for source in read_sources(args) for key, value in source.items()}
    out = export_merged(parse_export_config(raw))
    print(f"wrote the merged model to {out}")
    return 0


def _preview(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ember preview", allow_abbrev=False, description="the first training samples of an LM "
                                     "config exactly as training builds them; text within « » carries no loss")
    parser.add_argument("--n", type=int, default=3, help="how many samples, in dataset order")
    parser.add_argument("--json", action="store_true", help="one JSON line per sample: input_ids and labels")
    opts, rest = parser.parse_known_args(args)  # the rest: the config, as for ember train
    from .preview import run_preview
    sys.stdout.write(run_preview(rest, opts.n, opts.json))
    return 0


def _web(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ember web", description="the page: configure, launch, watch, stop and try runs")
    parser.add_argument("--runs", default="runs", help="folder whose runs the page shows and where it puts new ones")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; any but loopback needs --token")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--token", default=None, help="password the page asks for (required off loopback)")
    opts = parser.parse_args(args)
    from .web.app import serve
    serve(opts.runs, opts.host, opts.port, opts.token)
    return 0


COMMANDS = {"train": _train, "tokenizer": _tokenizer, "generate": _generate, "chat": _chat, "export": _export,
            "preview": _preview, "web": _web}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded at run time
    prefer_huge_pages()  # before anything imports torch and allocates
    logging.basicConfig(level=logging.INFO, format="ember: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "datasets", "httpx", "matplotlib", "bitsandbytes", "peft"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)  # dependencies' deprecation notices
    import datasets
    import transformers
    transformers.utils.logging.disable_progress_bar()
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
    from .engine.checkpoint import CheckpointError  # torch is imported only once a command needs it
    from .engine.preemption import Preempted
    try:
        return COMMANDS[argv[0]](argv[1:])
    except ConfigError as err:
        print(f"ember: error: {err}", file=sys.stderr)
        return 2
    except CheckpointError as err:
        print(f"ember: error: {err}", file=sys.stderr)
        return 1
    except Preempted as stop:
        print(f"ember: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("ember: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
