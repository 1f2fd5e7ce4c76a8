"""A tiny EVEv2 export through the generation engine, the chat CLI, the web demo and the evaluation batcher."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from eve_lightning.data.tokenizer import default_tokenizer_path
from eve_lightning.eval.base import Question
from eve_lightning.eval.generation import BatchAnswerer, pad_batch
from eve_lightning.inference.engine import ChatEngine, GenerationConfig, PromptTooLongError
from eve_lightning.inference.generate import extend_token_kwargs, generate_tokens
from eve_lightning.models.export_format import save_export
from eve_lightning.webui.server import create_app
from tests.helpers.official_checkpoint_v2 import tiny_evev2


@pytest.fixture(scope="module")
def v2_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v2") / "tiny-evev2"
    return save_export(folder, tiny_evev2(seed=1), tokenizer_files=[default_tokenizer_path()], stage="evev2_sft")


@pytest.fixture(scope="module")
def engine(v2_export) -> ChatEngine:
    return ChatEngine.from_dir(v2_export, device="cpu")


def photo(width: int = 150, height: int = 100) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_the_engine_uses_the_v2_template_view_and_token_count(engine):
    assert (engine.family, engine.template.name, engine.image_size) == ("evev2", "qwen2", 800)
    assert engine.stop_id == engine.loaded.tokenizer.eos_id  # the LLaMA vocabulary has no <|im_end|>
    batch = engine.encode(photo(150, 100), [("user", "What is in the picture?")])
    # inference rule at max_size 800: 150 x 100 -> 980 x 654 px -> 31 x 21 cells, on a 992-px square canvas
    assert tuple(batch["pixel_values"].shape) == (1, 3, 992, 992)
    assert int(batch["pixel_mask"].sum()) == 992 * 672
    vlm = engine.loaded.vlm
    mm = vlm.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["pixel_mask"])
    assert engine.prompt_tokens(batch) == mm.inputs_embeds.shape[1] == batch["input_ids"].shape[1] - 1 + 1 + 21 * 32
    assert int(mm.vision_mask.sum()) == 1 + 21 * 32


def test_chat_answers_a_question_about_an_image(engine):
    answer = engine.chat(photo(), [("user", "What is in the picture?")], GenerationConfig(max_new_tokens=6))
    assert isinstance(answer, str)
    assert 1 <= engine.last_stats["new_tokens"] <= 6 and engine.last_stats["prompt_tokens"] > 600


def test_cached_and_uncached_greedy_generation_agree(engine):
    image = photo(64, 128)
    turns = [("user", "Describe the image.")]
    cached = [engine.chat(image, turns, GenerationConfig(max_new_tokens=10, use_cache=c)) for c in (True, False)]
    assert cached[0] == cached[1]
    batch = engine.encode(image, turns)
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["pixel_mask"], None)
    ids = [
        torch.stack(list(generate_tokens(engine.loaded.vlm, *args, GenerationConfig(10, use_cache=c), 4096)))
        for c in (True, False)
    ]
    assert ids[0].shape == (10, 1) and torch.equal(ids[0], ids[1])


def test_the_uncached_path_keeps_image_tokens_on_the_vision_weights(engine):
    """Without the extended mask the re-run would treat the image as text and the logits would change."""
    vlm = engine.loaded.vlm
    batch = engine.encode(photo(), [("user", "Hi")])
    mm = vlm.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["pixel_mask"])
    kwargs = extend_token_kwargs(vlm.llm_kwargs(mm))
    assert kwargs["vision_mask"].shape[1] == mm.vision_mask.shape[1] + 1 and not bool(kwargs["vision_mask"][0, -1])
    with torch.no_grad():
        routed = vlm.llm(inputs_embeds=mm.inputs_embeds, **vlm.llm_kwargs(mm)).logits[:, -1]
        text_only = vlm.llm(inputs_embeds=mm.inputs_embeds).logits[:, -1]
    assert not torch.allclose(routed, text_only, atol=1e-4)


def test_a_prompt_too_long_counts_the_v2_image_tokens(engine):
    turns = [("user", "word " * 3600)]  # about 3650 text tokens of the 4096-position context
    engine.chat(None, turns, GenerationConfig(max_new_tokens=1))  # fits without the image
    batch = engine.encode(photo(1000, 40), turns)  # 4000 x 160 px at max_size 800: 1 + 5 * 126 = 631 tokens
    assert engine.prompt_tokens(batch) == batch["input_ids"].shape[1] - 1 + 631 > 4096
    with pytest.raises(PromptTooLongError, match="text \\+ image tokens"):
        engine.chat(photo(1000, 40), turns, GenerationConfig(max_new_tokens=2))


def test_eval_batches_images_of_different_canvas_sizes(engine, tmp_path):
    paths = []
    for i, size in enumerate([(150, 100), (40, 300)]):
        paths.append(tmp_path / f"{i}.png")
        photo(*size).save(paths[-1])
    encoded = [engine.encode(Image.open(p), [("user", "Q")]) for p in paths]
    batch = pad_batch([*encoded, engine.encode(None, [("user", "text only")])], pad_id=0)
    assert batch["pixel_values"].shape[-1] == max(e["pixel_values"].shape[-1] for e in encoded)
    questions = [Question(qid=str(i), prompt="What colour?", image=str(p)) for i, p in enumerate(paths)]
    answerer = BatchAnswerer(engine, max_new_tokens=3, threads=0)
    together = answerer(questions)
    alone = [answerer([q])[0] for q in questions]
    assert together == alone and len(together) == 2


def test_the_web_demo_answers_one_request(engine):
    buf = __import__("io").BytesIO()
    photo(120, 90).save(buf, format="PNG")
    messages = json.dumps([{"role": "user", "content": "What is in the picture?"}])
    with TestClient(create_app(engine), base_url="http://127.0.0.1") as client:
        info = client.get("/api/info").json()
        r = client.post(
            "/api/chat",
            data={"messages": messages, "max_new_tokens": "4"},
            files={"image": ("photo.png", buf.getvalue(), "image/png")},
        )
    assert info["image_size"] == 800
    assert r.status_code == 200, r.text
    kinds = [block.split("\n", 1)[0] for block in r.text.split("\n\n") if block.strip()]
    assert kinds[-1] == "event: done" and "event: error" not in kinds


def run(module, args, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_chat_cli_answers_with_a_v2_export(v2_export, tmp_path):
    img = tmp_path / "photo.png"
    photo().save(img)
    args = ["--model", str(v2_export), "--image", str(img), "--prompt", "What is this?", "--max-new-tokens", "4"]
    proc = run("eve_lightning.chat", [*args, "--device", "cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "800 px" in proc.stderr


@pytest.mark.slow
def test_eval_runs_the_demo_benchmark_with_a_v2_export(v2_export, demo_root, tmp_path):
    out = tmp_path / "eval-out"
    args = [f"model={v2_export}", f"data.root={demo_root}", f"output_dir={out}", "max_new_tokens=3", "limit=3"]
    proc = run("eve_lightning.eval", [*args, "batch_size=2", "progress=false", "threads=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["benchmark"] == "demo" and line["counts"]["asked"] == 3 and "accuracy" in line["metrics"]
    results = json.loads((out / "results.json").read_text())
    assert "qwen2" in results["generation"]["template"]
