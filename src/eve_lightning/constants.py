"""Constants shared by the data pipeline and the model (the only module both may import).

The batch contract between `eve_lightning.data` and `eve_lightning.models` (padded layout; the packed layout
adds the keys marked "packed"):

| key                    | dtype / shape            | meaning                                                        |
|------------------------|--------------------------|----------------------------------------------------------------|
| input_ids              | int64 [B, L]             | token ids; at most one IMAGE_TOKEN_INDEX per row; right-padded |
| labels                 | int64 [B, L]             | IGNORE_INDEX where not supervised                              |
| attention_mask         | bool [B, L]              | True on real tokens                                            |
| pixel_values           | uint8 [B, 3, S, S]       | EVE view (S = 672 or 1344), background-padded, NOT normalized |
| pixel_mask             | uint8 [B, S, S]          | 1 on the pasted image band, 0 on padding (all 0: no image)     |
| teacher_pixel_values   | uint8 [B, 3, 336, 336]   | teacher (CLIP) view, optional (only when the aligner is on)    |
| teacher_pixel_mask     | uint8 [B, 336, 336]      | teacher band mask, optional                                    |
| position_ids (packed)  | int64 [B, L]             | restarts at 0 for every packed sample; counted in expanded     |
|                        |                          | coordinates: the placeholder holds the first image token's     |
|                        |                          | position, text after it continues at +num_image_tokens         |
| seq_ids (packed)       | int64 [B, L]             | sample index within the row (-1 on padding)                    |
| pixel_values (packed)  | uint8 [N, 3, S, S]       | one canvas per IMAGE_TOKEN_INDEX, in row-major order (a packed |
|                        |                          | row may hold several placeholders; N may be 0); same for       |
|                        |                          | pixel_mask [N, S, S] and the teacher keys                      |
| meta                   | dict (not tensors)       | "keys": sample ids in row order; "stats": floats for logging   |
|                        |                          | (samples, image_samples, label_tokens, real_tokens,            |
|                        |                          | slot_tokens, real_token_share, dropped, dropped_<reason>,      |
|                        |                          | filler); never a model input: pop it before the forward        |

Images are carried as uint8 and normalized on the device (see `models.patch_embedding.normalize_pixels`).
"""

IMAGE_TOKEN_INDEX = -200  # placeholder id spliced into input_ids where the image tokens go
IGNORE_INDEX = -100  # label value that is not supervised
IMAGE_PLACEHOLDER = "<image>"

# CLIP ViT-L/14-336 normalization, also used by the EVE view.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Padding colour of both views: floor(255 * mean) = (122, 116, 104).
BACKGROUND_RGB = tuple(int(255 * m) for m in CLIP_MEAN)

TEACHER_IMAGE_SIZE = 336  # CLIP ViT-L/14-336 input side
PATCH_SIZE = 14  # conv patch of the EVE view and of the teacher
POOL_STRIDE = 2  # EVE local-attention pooling window (2x2 patches -> one token)

# Largest image (width x height) that is decoded, when shards are written and when they are read: a larger one is
# skipped and counted before its pixels are decoded (Pillow alone would decode up to 179 M pixels).
MAX_IMAGE_PIXELS = 40_000_000
