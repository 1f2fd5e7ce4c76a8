"""`python -m eve_lightning.chat [--model DIR] --image FILE [--prompt TEXT]`: talk to an EVE model.

With `--prompt`, answers once and exits; without, starts an interactive multi-turn chat about the image (`/clear`
starts over, `/quit` leaves). Tokens stream as they are generated. Greedy by default. Without `--model`, the demo
model that `make train` leaves in runs/demo/latest is used. `--bench` prints time to first token and tokens/s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from eve_lightning.inference.engine import ChatEngine, GenerationConfig, PromptTooLongError

DEFAULT_MODEL = Path("runs/demo/latest")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eve_lightning.chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="export, run folder, .ckpt or official folder")
    parser.add_argument("--image", help="image file (any format Pillow reads); omit for a text-only chat")
    parser.add_argument("--prompt", help="ask once and exit")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = Path(args.model)
    if not model.exists():
        hint = "run `make train` first, or pass --model" if model == DEFAULT_MODEL else "check --model"
        print(f"eve_lightning.chat: error: model {model} does not exist: {hint}", file=sys.stderr)
        return 2
    image = None
    if args.image:
        try:
            image = Image.open(args.image)
            image.load()
        except (OSError, ValueError) as err:
            print(f"eve_lightning.chat: error: cannot read image {args.image}: {err}", file=sys.stderr)
            return 2
    try:
        engine = ChatEngine.from_dir(model, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"eve_lightning.chat: error: cannot load a model from {model}: {err}", file=sys.stderr)
        return 2
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    print(f"[{engine.model_name}: {engine.loaded.kind}, {engine.image_size} px, {engine.device}]", file=sys.stderr)
    if args.prompt is not None:
        try:
            answer(engine, image, [("user", args.prompt)], gen, args.bench)
        except PromptTooLongError as err:
            print(f"eve_lightning.chat: error: {err}", file=sys.stderr)
            return 2
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
