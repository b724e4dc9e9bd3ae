"""What needs no numpy or torch: safetensors files, the configs we write, the dump tool's
outputs and how to run it.

Part of tools/reference_check.py (issue #28 item 6); see its docstring."""

import json
import math
import struct
import subprocess
import time

from .names import (
    ACTION_DIM, ACTION_HEAD_BLOCKS, BOS_ID, CAMERAS, CHUNK, DINO_TIMM_ID, EOS_ID, IMAGE_SIZE,
    LLM_HEADS, LLM_HIDDEN, LLM_INTERMEDIATE, PAD_ID, PROPRIO_DIM, RMS_EPS, ROPE_THETA,
    SIGLIP_TIMM_ID, VOCAB)

# Files without numpy/torch: safetensors (for the self test and the inputs' checks) and configs.

_ST_DTYPES = {"F32": ("f", 4), "I64": ("q", 8)}


def write_safetensors_stdlib(path, tensors, metadata=None):
    """tensors: {name: (dtype "F32"|"I64", shape, flat list)}; the reference layout."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, values = tensors[name]
        code, size = _ST_DTYPES[dtype]
        blob = struct.pack("<%d%s" % (len(values), code), *values)
        assert len(blob) == size * math.prod(shape), name
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def read_safetensors_stdlib(path, name):
    """One F32/I64 tensor as a flat list."""
    header = read_safetensors_header(path)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        t = header[name]
        code, _ = _ST_DTYPES[t["dtype"]]
        b, e = t["data_offsets"]
        f.seek(8 + n + b)
        data = f.read(e - b)
        return list(struct.unpack("<%d%s" % (len(data) // _ST_DTYPES[t["dtype"]][1], code), data))


def norm_stats():
    """OpenVLA dataset statistics (model/dataset_stats.h format): q01/q99/mask per dimension."""
    return {"reference_check": {
        "action": {"q01": [-1.0] * ACTION_DIM, "q99": [1.0] * ACTION_DIM,
                   "mask": [True] * (ACTION_DIM - 1) + [False]},
        "proprio": {"q01": [-1.0] * PROPRIO_DIM, "q99": [1.0] * PROPRIO_DIM,
                    "mask": [True] * PROPRIO_DIM}}}


def hf_config_json(llm_layers):
    """An HF OpenVLA-OFT config.json in the public layout; every key is one model/hf_config.cc reads
    (text_config with HF LlamaConfig names), plus the identifying keys of the public files."""
    return {
        "architectures": ["OpenVLAForActionPrediction"],
        "model_type": "openvla",
        "arch_specifier": "no-align+fused-gelu-mlp",
        "use_fused_vision_backbone": True,
        "timm_model_ids": [DINO_TIMM_ID, SIGLIP_TIMM_ID],
        "timm_override_act_layers": [None, None],
        "image_sizes": [IMAGE_SIZE, IMAGE_SIZE],
        "image_resize_strategy": "resize-naive",
        "vision_backbone_id": "dinosiglip-vit-so-224px",
        "llm_backbone_id": "llama2-7b-pure",
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "num_images_in_input": CAMERAS,
        "pad_token_id": PAD_ID,
        "norm_stats": norm_stats(),
        "text_config": {
            "model_type": "llama", "hidden_size": LLM_HIDDEN,
            "intermediate_size": LLM_INTERMEDIATE, "num_hidden_layers": llm_layers,
            "num_attention_heads": LLM_HEADS, "num_key_value_heads": LLM_HEADS,
            "vocab_size": VOCAB, "rms_norm_eps": RMS_EPS, "rope_theta": ROPE_THETA,
            "rope_scaling": None, "hidden_act": "silu", "attention_bias": False,
            "mlp_bias": False, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
            "pad_token_id": PAD_ID},
        "torch_dtype": "float32",
    }


def specprune_config_json(shape):
    """Our config.json ({"specprune": ModelConfig}, every key of model/config.cc ConfigToJson)."""
    def tower(name, t):
        return {"name": name, "width": t["width"], "depth": t["depth"], "heads": t["heads"],
                "mlp_dim": t["mlp_dim"], "patch_size": shape["patch"],
                "output_block": t["depth"] - 2, "num_register_tokens": t["regs"],
                "class_token": t["cls"], "layer_scale": t["ls"], "gelu_tanh": False,
                "norm_eps": 1e-6, "stem": "patch", "stem_channels": 32, "pos_embed": "learned",
                "mean": t["mean"], "std": t["std"]}
    return {"specprune": {
        "name": "openvla-oft-reference",
        "image_size": shape["image"], "cameras": ["main", "wrist"][:shape["cams"]],
        "towers": [tower("featurizer", shape["dino"]), tower("fused_featurizer", shape["siglip"])],
        "projector_hidden": shape["proj_hidden"],
        "llm": {"hidden": shape["hidden"], "layers": shape["layers"], "heads": shape["heads"],
                "intermediate": shape["inter"], "vocab_size": shape["vocab"],
                "rms_norm_eps": RMS_EPS, "rope_theta": ROPE_THETA, "bos_token_id": BOS_ID,
                "eos_token_id": EOS_ID, "pad_token_id": shape["pad"]},
        "proprio_dim": PROPRIO_DIM, "action_dim": ACTION_DIM, "chunk_size": CHUNK,
        "action_head_hidden": shape["hidden"], "action_head_blocks": ACTION_HEAD_BLOCKS,
        "prompt_suffix_token": -1,
        "prompt_template": "In: What action should the robot take to {}?\nOut:",
        "gripper_postprocess": "none", "center_crop_area": 1.0, "instruction_film": False,
        "instruction_film_pooling": "mean"},
        "torch_dtype": "float32"}


def expected_outputs(cfg, batch, lengths):
    """Names and shapes the dump tool writes (tools/reference_dump.cc header comment)."""
    cams, p = len(cfg["cameras"]), (cfg["image_size"] // cfg["towers"][0]["patch_size"]) ** 2
    d = cfg["llm"]["hidden"]
    w = sum(t["width"] for t in cfg["towers"])
    chunk, adim = cfg["chunk_size"], cfg["action_dim"]
    t_max = max(1 + cams * p + 1 + m + chunk * adim + 1 for m in lengths)
    out = {"vision.tower." + t["name"]: [batch * cams, p, t["width"]] for t in cfg["towers"]}
    out.update({
        "vision.fused": [batch * cams, p, w], "vision.projected": [batch, cams * p, d],
        "proprio.projected": [batch, d], "llm.inputs_embeds": [batch, t_max, d],
        "llm.last_hidden_state": [batch, t_max, d], "llm.lengths": [batch],
        "action_head.input": [batch, chunk * adim, d],
        "actions": [batch, chunk, adim], "replica.actions": [batch, chunk, adim],
        "replica.max_abs_diff": [1]})
    for l in range(cfg["llm"]["layers"]):
        out["llm.layers.%d.output" % l] = [batch, t_max, d]
    return out


def check_dump_header(path, cfg, batch, lengths):
    """Problems with the dump's names/shapes (empty list = as documented)."""
    header = read_safetensors_header(path)
    header.pop("__metadata__", None)
    want = expected_outputs(cfg, batch, lengths)
    problems = ["missing %s" % n for n in sorted(set(want) - set(header))]
    problems += ["unexpected %s" % n for n in sorted(set(header) - set(want))]
    problems += ["%s has shape %s, expected %s" % (n, header[n]["shape"], want[n])
                 for n in sorted(set(want) & set(header)) if header[n]["shape"] != want[n]]
    return problems


def run_dump(tool, model_dir, inputs, out, device, dtype, extra=()):
    cmd = [tool, "--model_dir", model_dir, "--inputs", inputs, "--out", out, "--device", device,
           "--dtype", dtype] + list(extra)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr, time.time() - t0
