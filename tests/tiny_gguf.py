"""A tiny seeded Qwen2 model written as a GGUF file (Q8_0 or Q4_0 matrices, float32
vectors), with the tiny tokenizer in its metadata, as llama.cpp's converter lays them out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import MODEL_ARCH, GGMLQuantizationType, GGUFWriter, get_tensor_name_map, quants

from tiny_models import build_model, tiny_config, train_tokenizer


def write_tiny_gguf(path: Path, seed: int = 0, vocab_size: int = 320,
                    matrices: GGMLQuantizationType = GGMLQuantizationType.Q8_0) -> Path:
    tokenizer = train_tokenizer(vocab_size)
    eos = tokenizer.convert_tokens_to_ids("<eos>")
    config = tiny_config(len(tokenizer), eos)
    model = build_model(config, seed)
    w = GGUFWriter(str(path), "qwen2")
    w.add_name("tiny")
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(config.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_file_type({GGMLQuantizationType.Q8_0: 7, GGMLQuantizationType.Q4_0: 2}[matrices])
    tk = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = set(tokenizer.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in special else 1 for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tk["model"]["merges"]])
    w.add_eos_token_id(eos)
    w.add_pad_token_id(eos)
    names = get_tensor_name_map(MODEL_ARCH.QWEN2, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        base, suffix = hf_name.rsplit(".", 1)
        data = tensor.float().numpy()
        if data.ndim == 2:
            w.add_tensor(f"{names.get_name(base)}.{suffix}",
                         quants.quantize(data, matrices), raw_dtype=matrices)
        else:
            w.add_tensor(f"{names.get_name(base)}.{suffix}", np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
