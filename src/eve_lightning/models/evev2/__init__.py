"""EVEv2: encoder-free VLM on a Qwen2.5 decoder whose layers hold vision copies of their token-wise parts.

Modules: ``routing`` (text/vision token routing), ``decoder`` (the Qwen2 decoder with vision copies, the copy step),
``patch_embedding`` (pixels -> tokens), ``splice`` (image tokens into the rows, modality mask), ``model``
(``EveV2VLM`` and its config), ``build`` (Hydra factories).

Facts taken from the public original (baaivision/EVE, folder ``EVEv2/``; read for facts, no code taken):

* ``eve/model/language_model/qwen2/modeling_qwen2.py``: with ``add_moe`` and ``moe_part`` (a dash-joined subset of
  ``layernorm``, ``self_attn``, ``mlp``; the scripts use ``layernorm-self_attn-mlp``) every decoder layer gets
  ``moe_q_proj``, ``moe_k_proj``, ``moe_v_proj`` (with bias) and ``moe_o_proj`` (no bias) next to q/k/v/o in
  ``self_attn``, a second MLP ``moe_mlp``, and ``moe_input_layernorm`` / ``moe_post_attention_layernorm``. Each split
  part computes both copies for every token and blends them, ``text(x) * (1 - m) + vision(x) * m``, with ``m`` the
  per-token image mask (``visual_token_mask``); q, k and v are blended before the rotary embedding, the attention
  output before ``o_proj``; attention itself is one call over all tokens. Steps with a single query token (cached
  decoding) use the text weights only. The final norm, embeddings and LM head are shared.
* ``eve/model/multimodal_encoder/vision_tokenizer.py`` (and ``eve/model/eve_arch.py``, which builds it as
  ``model.vision_tower``): ``patch_embedding`` is ``Sequential(Conv2d(3, 1024, 16, stride 16), GELU,
  Conv2d(1024, hidden_size, 2, stride 2))`` with biases, so the second convolution already gives the LLM width and
  there is no projector; per image the token map gets one split token appended to every row of cells, is flattened
  row-major and prefixed with one class token: ``1 + h * (w + 1)`` tokens. The parameters are called
  ``class_embedding`` and ``split_embedding`` in the latest version; earlier commits called the class token
  ``start_embedding`` (and once the split token ``end_embedding``), which is why loading the released weights
  reported ``class_embedding`` / ``split_embedding`` as unused (issue #18). ``vision_tower_hidden_size`` defaults
  to 1024 (``eve/train/train.py``). The class token is a plain learned vector (no attention pooling).
* ``eve/model/eve_arch.py``: image features replace each IMAGE_TOKEN_INDEX (-200) placeholder; the image mask is 1 on
  all of an image's tokens (class and split tokens included) and 0 on text; labels are IGNORE_INDEX on image tokens;
  rows are cut to ``tokenizer_model_max_length`` after expansion and right-padded.
* ``eve/train/repeat_moe.py``: the copy step loads every parameter whose name contains ``moe`` from the parameter of
  the same name without ``moe_`` (text weights -> vision copies), then saves the model.
* ``openai/eve-anyratio-res{800,1600}-patch16/preprocessor_config.json``: CLIP mean/std normalisation, no resize or
  crop by the processor, ``max_size`` 800 / 1600, ``patch_stride`` 16, ``dense_stride`` 2. ``eve/mm_utils.py`` and
  ``eve/train/train.py`` resize an image so that its area is about ``max_size ** 2`` (training only shrinks larger
  images), each side rounded to a multiple of 32 px, aspect ratio kept.

Checkpoint key names of the original (for importing ``BAAI/EVE-7B-HD-v2.0``), and ours:

=========================================================  =========================================================
original                                                   ours (under ``vlm.`` of the training model)
=========================================================  =========================================================
``model.vision_tower.patch_embedding.{0,2}.{weight,bias}``  ``patch_embed.patch_embedding.{0,2}.{weight,bias}``
``model.vision_tower.class_embedding``                     ``patch_embed.class_embedding``
``model.vision_tower.split_embedding``                     ``patch_embed.split_embedding``
``model.layers.N.self_attn.moe_{q,k,v,o}_proj.*``          ``llm.model.layers.N.self_attn.moe_{q,k,v,o}_proj.*``
``model.layers.N.moe_mlp.{gate,up,down}_proj.weight``      ``llm.model.layers.N.moe_mlp.{gate,up,down}_proj.weight``
``model.layers.N.moe_{input,post_attention}_layernorm``    ``llm.model.layers.N.moe_{input,post_attention}_layernorm``
``model.*`` (Qwen2 text weights), ``lm_head.weight``       ``llm.model.*``, ``llm.lm_head.weight``
=========================================================  =========================================================
"""

from eve_lightning.models.evev2.build import build_evev2_decoder, build_evev2_model
from eve_lightning.models.evev2.decoder import (
    MOE_PARTS,
    EveV2ForCausalLM,
    EveV2Model,
    copy_text_to_vision,
    is_vision_parameter,
)
from eve_lightning.models.evev2.model import EveV2Config, EveV2VLM
from eve_lightning.models.evev2.patch_embedding import EveV2PatchEmbedding

__all__ = [
    "MOE_PARTS",
    "EveV2Config",
    "EveV2ForCausalLM",
    "EveV2Model",
    "EveV2PatchEmbedding",
    "EveV2VLM",
    "build_evev2_decoder",
    "build_evev2_model",
    "copy_text_to_vision",
    "is_vision_parameter",
]
