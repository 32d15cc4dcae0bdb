"""Writes the demo model: a tiny two-layer transformer's tensor names, with metadata."""
import sys

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

rng = np.random.default_rng(0)
hidden, vocab = 64, 256
tensors = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(ml_dtypes.bfloat16)}
for layer in range(2):
    p = f"model.layers.{layer}"
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        tensors[f"{p}.attn.{proj}.weight"] = rng.standard_normal((hidden, hidden)).astype(np.float16)
    tensors[f"{p}.mlp.up_proj.weight"] = rng.standard_normal((4 * hidden, hidden)).astype(np.float32)
    tensors[f"{p}.mlp.down_proj.weight"] = rng.standard_normal((hidden, 4 * hidden)).astype(np.float32)
    tensors[f"{p}.input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
save_file(tensors, sys.argv[1], metadata={"format": "pt", "model_type": "demo", "layers": "2"})
