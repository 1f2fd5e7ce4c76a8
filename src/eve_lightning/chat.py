"""`python -m eve_lightning.chat [--model DIR] --image FILE [--prompt TEXT]`: talk to an EVE model.

With `--prompt`, answers once and exits; without, starts an interactive multi-turn chat about the image (`/clear`
starts over, `/quit` leaves). Tokens stream as they are generated. Greedy by default (`--temperature 0`); with
`--temperature T > 0` it samples, from the smallest set of likeliest tokens whose mass reaches `--top-p` (in (0, 1],
1 = all tokens). Without `--model`, the demo model that `make train` leaves in runs/demo/latest is used. `--bench`
prints time to first token and tokens/s. A mistake in the arguments (a value out of range, a missing model or image)
ends it at once with exit status 2 and one line saying what to change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from eve_lightning.inference.generate import GenerationConfig, GenerationConfigError, PromptTooLongError
from eve_lightning.utils.cli import OneLineArgumentParser

if TYPE_CHECKING:
    from eve_lightning.inference.engine import ChatEngine

PROG = "python -m eve_lightning.chat"
DEFAULT_MODEL = Path("runs/demo/latest")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="export, run folder, .ckpt or official folder")
    parser.add_argument("--image", help="image file (any format Pillow reads); omit for a text-only chat")
    parser.add_argument("--prompt", help="ask once and exit")
    parser.add_argument("--temperature", type=float, default=0.0, help=">= 0; 0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off (default)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help=">= 1 (default 256)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--bench", action="store_true", help="print time to first token and tokens/s")
    return parser.parse_args(argv)


def answer(engine: ChatEngine, image, turns, gen: GenerationConfig, bench: bool) -> str:
    parts = []
    for delta in engine.stream(image, turns, gen):
        parts.append(delta)
        print(delta, end="", flush=True)
    print(flush=True)
    if bench:
        s = engine.last_stats
        print(
            f"[bench] prompt {s['prompt_tokens']} tokens | first token {s['ttft_s'] * 1000:.0f} ms | "
            f"{s['new_tokens']} new tokens at {s['tokens_per_s']:.1f} tokens/s",
            flush=True,
        )
    return "".join(parts)


def fail(message: str) -> int:
    """Print one error line on stderr; return the exit status of a usage problem (2)."""
    print(f"eve_lightning.chat: error: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # the sampling settings first: a typo there should not cost a model load
        gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    except GenerationConfigError as err:
        return fail(f"--{err.option.replace('_', '-')} {err.reason}")
    model = Path(args.model)
    if not model.exists():
        hint = "run `make train` first, or pass --model" if model == DEFAULT_MODEL else "check --model"
        return fail(f"model {model} does not exist: {hint}")
    image = None
    if args.image:
        try:
            image = Image.open(args.image)
            image.load()
        except (OSError, ValueError) as err:
            return fail(f"cannot read image {args.image}: {err}")
    from eve_lightning.inference.engine import ChatEngine  # after the checks: they need no model code

    try:
        engine = ChatEngine.from_dir(model, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        return fail(f"cannot load a model from {model}: {err}")
    print(f"[{engine.model_name}: {engine.loaded.kind}, {engine.image_size} px, {engine.device}]", file=sys.stderr)
    if args.prompt is not None:
        try:
            answer(engine, image, [("user", args.prompt)], gen, args.bench)
        except PromptTooLongError as err:
            return fail(str(err))
        return 0
    turns: list[tuple[str, str]] = []
    while True:
        try:
            text = input("USER: ").strip()
        except EOFError:
            return 0
        if text in ("/quit", "/exit"):
            return 0
        if text == "/clear":
            turns = []
            continue
        if not text:
            continue
        turns.append(("user", text))
        print("ASSISTANT: ", end="", flush=True)
        try:
            reply = answer(engine, image, turns, gen, args.bench)
        except PromptTooLongError as err:
            print(f"\n[{err}]", flush=True)
            turns.pop()
            continue
        turns.append(("assistant", reply))


if __name__ == "__main__":
    sys.exit(main())
