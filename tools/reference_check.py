#!/usr/bin/env python3
"""Reference check against code nobody here wrote (issue #28 item 6).

Builds OpenVLA-OFT's parts from third-party code with random weights, saves them in the Hugging Face
OpenVLA(-OFT) checkpoint layout, runs our C++ forward on the same inputs (specprune_reference_dump,
tools/reference_dump.cc) and compares vision features, LLM hidden states and actions.

  python3 tools/reference_check.py --dump_tool PATH --work DIR --json FILE
                                   [--device cuda|cpu] [--dtypes fp32,bf16]
                                   [--vision_blocks N] [--llm_layers N] [--seed S] [--keep]
  python3 tools/reference_check.py --self_test --dump_tool PATH --work DIR   (stdlib only; ctest)

Exit status: 0 every gated quantity passed; 1 a quantity failed or a step broke (the JSON says
which); 77 torch / transformers / timm / safetensors missing (printed); 2 usage.

Who wrote what:
  third party  timm `vit_large_patch14_reg4_dinov2.lvd142m` (DINOv2 ViT-L/14, 4 registers) and
               `vit_so400m_patch14_siglip_224` (SigLIP so400m/14), created with pretrained=False,
               img_size=224, num_classes=0, read the way OpenVLA's prismatic code reads them:
               get_intermediate_layers(x, n={len(blocks) - 2}) (second-to-last block, no final
               norm, prefix tokens dropped); image normalization from each model's timm
               pretrained_cfg mean/std. transformers LlamaModel (embedding, decoder layers, rotary
               embedding, final RMSNorm), run bidirectionally (OpenVLA-OFT's parallel decoding).
  ours         (no third-party implementation exists) the fused-GELU-MLP projector, the proprio
               projector, the OFT L1-regression action head (MLP-ResNet), the sequence layout
               [BOS | vision | proprio | prompt | zero action placeholders | EOS] and the action
               readout one row before each placeholder, written below in plain torch from
               /work/shared/DESIGN.md section 4 and model/action_head.cc, model/sequence_layout.h.

Layouts (--vision_blocks):
  0 (default)  the public HF layout: an HF OpenVLA config.json (model/hf_config.cc maps it onto the
               openvla-oft-7b preset), full-depth towers (24 / 27 blocks, outputs of blocks
               22 / 25),
               Llama with --llm_layers layers at full width (4096, 32 heads, MLP 11008),
               model.safetensors, action_head--reference.pt / proprio_projector--reference.pt
               (torch.save of the OFT modules' state dicts with DDP's "module." prefix, read by
               model/torch_state_dict.cc), norm_stats inside config.json, tokenizer.model.
  N >= 2       towers of N blocks at full width (output of block N - 2); config.json is then ours
               ({"specprune": ...}, model/config.cc), because the HF mapping fixes the tower depth.
               Same tensor names and side files. Faster (~0.9 B instead of ~1.5 B parameters).

Numbers: every quantity is compared by max_rel = max|ours - ref| / max|ref| (also reported: max_abs,
ref_max_abs, rms_rel = ||ours - ref|| / ||ref||). fp32 gate: max_rel <= --fp32_tol (1e-3), TF32 off
on both sides. bf16 gate (loose): max_rel <= --bf16_tol (5e-2) against the bf16 reference (the same
third-party modules cast to bf16, OpenVLA's casting points) or against the fp32 reference, both
reported.
"""

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import shutil
import struct
import subprocess
import sys
import time

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_SKIP = 0, 1, 2, 77

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOKENIZER = os.path.join(REPO, "models", "tiny", "tokenizer.model")

DINO_TIMM_ID = "vit_large_patch14_reg4_dinov2.lvd142m"  # model/hf_config.cc kDinoTimmId
SIGLIP_TIMM_ID = "vit_so400m_patch14_siglip_224"  # model/hf_config.cc kSiglipTimmId

# Shapes of the full-width model (model/config.cc OpenVlaOft7b; DESIGN.md section 4).
IMAGE_SIZE = 224
PATCH = 14
CAMERAS = 2  # model/hf_config.cc: num_images_in_input defaults to 2 (main, wrist)
LLM_HIDDEN, LLM_HEADS, LLM_INTERMEDIATE, VOCAB, PAD_ID = 4096, 32, 11008, 32064, 32000
BOS_ID, EOS_ID = 1, 2
RMS_EPS = 1e-5  # written to text_config.rms_norm_eps; both sides read it from there
ROPE_THETA = 10000.0  # Llama-2 / OpenVLA; text_config.rope_theta
CHUNK, ACTION_DIM, PROPRIO_DIM = 8, 7, 8  # OpenVLA-OFT constants (model/hf_config.cc defaults)
ACTION_HEAD_BLOCKS = 2
PROJECTOR_HIDDEN = 8704  # 4 x (1024 + 1152), model/config.cc projector_hidden

# ---------------------------------------------------------------------------------------------
# THE name table: third-party (and our plain-torch) parameter names -> the checkpoint names our
# loader reads. Each row: (module, regex over the module's own parameter name, our name template
# ({0}, {1} = the regex groups), where our C++ code defines that name). Checked by the loader at
# load time (model/checkpoint.cc LoadWeights lists every missing / unexpected / mis-shaped name).
# Module prefixes: model/vla_model.cc VlaModuleImpl registers "vision_backbone", "projector",
# "language_model", "action_head", "proprio_projector"; model/vision.cc VisionBackboneImpl registers
# each tower under its config name ("featurizer" = DINOv2, "fused_featurizer" = SigLIP,
# model/config.cc OpenVlaOft7b); model/llama.cc LanguageModelImpl registers "model".
# "unused" rows are written like a real checkpoint and skipped by our loader
# (model/checkpoint.cc IsKnownUnused: a tower's final norm, attn_pool, head, fc_norm).
_VIT_BLOCK = [
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", "blocks.{0}.norm1.{1}",
     "model/vision.cc VitBlockImpl register_module(\"norm1\") (LayerNorm, model/layers.cc)"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", "blocks.{0}.attn.qkv.{1}",
     "model/vision.cc VitAttentionImpl register_module(\"qkv\"): fused [3W, W], q|k|v rows"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", "blocks.{0}.attn.proj.{1}",
     "model/vision.cc VitAttentionImpl register_module(\"proj\")"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", "blocks.{0}.norm2.{1}",
     "model/vision.cc VitBlockImpl register_module(\"norm2\")"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", "blocks.{0}.mlp.fc1.{1}",
     "model/vision.cc VitMlpImpl register_module(\"fc1\")"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", "blocks.{0}.mlp.fc2.{1}",
     "model/vision.cc VitMlpImpl register_module(\"fc2\")"),
    (r"patch_embed\.proj\.(weight|bias)", "patch_embed.proj.{0}",
     "model/vision.cc PatchEmbedImpl register_module(\"proj\") (stem \"patch\": one strided conv)"),
    (r"pos_embed", "pos_embed",
     "model/vision.cc VisionTowerImpl register_parameter(\"pos_embed\") [1, grid^2, W], "
     "patches only"),
    (r"norm\.(weight|bias)", "norm.{0}", "unused: final norm (model/checkpoint.cc IsKnownUnused)"),
]
NAME_TABLE = (
    [("dino", r"cls_token", "vision_backbone.featurizer.cls_token",
      "model/vision.cc VisionTowerImpl register_parameter(\"cls_token\") (class_token = true)"),
     ("dino", r"reg_token", "vision_backbone.featurizer.reg_token",
      "model/vision.cc VisionTowerImpl register_parameter(\"reg_token\") [1, 4, W]"),
     ("dino", r"blocks\.(\d+)\.ls1\.gamma",
      "vision_backbone.featurizer.blocks.{0}.ls1.scale_factor",
      "model/vision.cc LayerScaleImpl register_parameter(\"scale_factor\") (HF OpenVLA renames "
      "timm's gamma)"),
     ("dino", r"blocks\.(\d+)\.ls2\.gamma",
      "vision_backbone.featurizer.blocks.{0}.ls2.scale_factor",
      "model/vision.cc LayerScaleImpl (ls2)")] +
    [("dino", rx, "vision_backbone.featurizer." + ours, where) for rx, ours, where in _VIT_BLOCK] +
    [("siglip", rx, "vision_backbone.fused_featurizer." + ours, where)
     for rx, ours, where in _VIT_BLOCK] +
    [("siglip", r"attn_pool\.(.+)", "vision_backbone.fused_featurizer.attn_pool.{0}",
      "unused: SigLIP MAP head (model/checkpoint.cc IsKnownUnused \".attn_pool.\")"),
     ("llama", r"embed_tokens\.weight", "language_model.model.embed_tokens.weight",
      "model/llama.cc LlamaModelImpl register_module(\"embed_tokens\")"),
     ("llama", r"layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.weight",
      "language_model.model.layers.{0}.self_attn.{1}_proj.weight",
      "model/llama.cc LlamaAttentionImpl q_proj/k_proj/v_proj/o_proj (no bias)"),
     ("llama", r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight",
      "language_model.model.layers.{0}.mlp.{1}_proj.weight",
      "model/llama.cc LlamaMlpImpl gate_proj/up_proj/down_proj (no bias)"),
     ("llama", r"layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight",
      "language_model.model.layers.{0}.{1}.weight",
      "model/llama.cc LlamaDecoderLayerImpl RmsNorm modules"),
     ("llama", r"norm\.weight", "language_model.model.norm.weight",
      "model/llama.cc LlamaModelImpl register_module(\"norm\")"),
     # Ours (plain torch below): the names are the HF / OFT names already.
     ("projector", r"(fc[123])\.(weight|bias)", "projector.{0}.{1}",
      "model/action_head.cc VisionProjectorImpl fc1/fc2/fc3"),
     ("proprio_projector", r"(fc[12])\.(weight|bias)", "proprio_projector.{0}.{1}",
      "model/action_head.cc ProprioProjectorImpl fc1/fc2; side file proprio_projector--*, prefix "
      "added by model/checkpoint.cc OpenCheckpoint"),
     ("action_head", r"model\.(layer_norm[12]|fc[12])\.(weight|bias)", "action_head.model.{0}.{1}",
      "model/action_head.cc MlpResNetImpl; side file action_head--*"),
     ("action_head", r"model\.mlp_resnet_blocks\.(\d+)\.ffn\.([01])\.(weight|bias)",
      "action_head.model.mlp_resnet_blocks.{0}.ffn.{1}.{2}",
      "model/action_head.cc MlpResNetBlockImpl Sequential(LayerNorm, Linear, ReLU): children 0, 1")]
)
SIDE_FILES = {"action_head.": "action_head", "proprio_projector.": "proprio_projector"}

# What this check cannot verify (recorded in the JSON): the "ours" parts are ours on both sides.
ASSUMPTIONS = [
    "the projector, proprio projector, action head, sequence layout and action readout are ours on "
    "both sides (no third-party implementation): a shared misreading of OpenVLA-OFT would pass",
    "HF OpenVLA checkpoints name DINOv2's LayerScale 'scale_factor' (timm: 'gamma'); our loader "
    "and this table follow that",
    "OpenVLA normalizes images in fp32 and then casts to bf16; our bf16 forward casts the [0, 1] "
    "image first and normalizes in bf16 (inside the bf16 tolerance, reported by vision.* in bf16)",
    "OpenVLA-OFT attends bidirectionally; the reference runs transformers' decoder layers with no "
    "mask (checked: row 0 changes when the last row does)",
]


def map_name(module, name):
    """Our checkpoint name for `module`'s parameter `name` (NAME_TABLE), or None."""
    for mod, rx, ours, _ in NAME_TABLE:
        if mod != module:
            continue
        m = re.fullmatch(rx, name)
        if m:
            return ours.format(*m.groups())
    return None


# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# The reference (torch, transformers, timm, safetensors). Imported lazily: missing -> exit 77.

def import_stack():
    mods, missing = {}, []
    for name in ("torch", "transformers", "timm", "safetensors"):
        try:
            mods[name] = __import__(name)
        except Exception:  # ImportError, or a broken install
            missing.append(name)
    if not missing:
        try:
            import safetensors.torch  # noqa: F401
        except Exception:
            missing.append("safetensors.torch")
    return mods, missing


def build_reference(m, args, dev, log):
    """The modules on `dev` in fp32 with deterministic random weights: {"dino", "siglip", "llama",
    "projector", "proprio_projector", "action_head"} + the dims used."""
    torch, transformers, timm = m["torch"], m["transformers"], m["timm"]
    nn, F = torch.nn, torch.nn.functional
    depth_kw = {} if args.vision_blocks == 0 else {"depth": args.vision_blocks}

    # ---- ours, plain torch (no third-party implementation exists) ----------------------------
    class Projector(nn.Module):  # ours: model/action_head.cc VisionProjectorImpl (fused-gelu-mlp)
        def __init__(self, vision_width, hidden, llm):
            super().__init__()
            self.fc1 = nn.Linear(vision_width, hidden)
            self.fc2 = nn.Linear(hidden, llm)
            self.fc3 = nn.Linear(llm, llm)

        def forward(self, x):  # exact GELU (torch::gelu default)
            return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))

    class ProprioProjector(nn.Module):  # ours: model/action_head.cc ProprioProjectorImpl
        def __init__(self, proprio_dim, llm):
            super().__init__()
            self.fc1 = nn.Linear(proprio_dim, llm)
            self.fc2 = nn.Linear(llm, llm)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x)))

    class MlpResNetBlock(nn.Module):  # ours: model/action_head.cc MlpResNetBlockImpl
        def __init__(self, dim):
            super().__init__()
            self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

        def forward(self, x):
            return x + self.ffn(x)

    class MlpResNet(nn.Module):  # ours: model/action_head.cc MlpResNetImpl (LayerNorm eps 1e-5)
        def __init__(self, blocks, in_dim, hidden, out_dim):
            super().__init__()
            self.layer_norm1 = nn.LayerNorm(in_dim)
            self.fc1 = nn.Linear(in_dim, hidden)
            self.mlp_resnet_blocks = nn.ModuleList([MlpResNetBlock(hidden) for _ in range(blocks)])
            self.layer_norm2 = nn.LayerNorm(hidden)
            self.fc2 = nn.Linear(hidden, out_dim)

        def forward(self, x):
            x = F.relu(self.fc1(self.layer_norm1(x)))
            for b in self.mlp_resnet_blocks:
                x = b(x)
            return self.fc2(self.layer_norm2(x))

    class ActionHead(nn.Module):  # ours: model/action_head.cc L1RegressionActionHeadImpl
        def __init__(self, llm):
            super().__init__()
            self.model = MlpResNet(ACTION_HEAD_BLOCKS, llm * ACTION_DIM, llm, ACTION_DIM)

        def forward(self, h):  # [B, chunk * action_dim, D] -> [B, chunk, action_dim]
            return self.model(h.reshape(h.shape[0], CHUNK, -1))

    t0 = time.time()
    # torch >= 2 builds the parameters on the device directly; older ones on the CPU, moved below.
    on_device = torch.device(dev) if hasattr(torch.device(dev), "__enter__") else (
        contextlib.nullcontext())
    with on_device:
        dino = timm.create_model(DINO_TIMM_ID, pretrained=False, num_classes=0,
                                 img_size=IMAGE_SIZE, **depth_kw)
        siglip = timm.create_model(SIGLIP_TIMM_ID, pretrained=False, num_classes=0,
                                   img_size=IMAGE_SIZE, **depth_kw)
        cfg_kw = dict(vocab_size=VOCAB, hidden_size=LLM_HIDDEN,
                      intermediate_size=LLM_INTERMEDIATE, num_hidden_layers=args.llm_layers,
                      num_attention_heads=LLM_HEADS, num_key_value_heads=LLM_HEADS,
                      max_position_embeddings=2048, rms_norm_eps=RMS_EPS, rope_theta=ROPE_THETA,
                      hidden_act="silu", attention_bias=False, mlp_bias=False,
                      bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                      tie_word_embeddings=False)
        # Keyword arguments a transformers version may refuse are dropped one by one (RoPE theta
        # and attention are verified after construction, the rest is the default anyway).
        cfg_kw["attn_implementation"] = "eager"
        optional = ["attn_implementation", "mlp_bias", "rope_theta", "tie_word_embeddings"]
        while True:
            try:
                lcfg = transformers.LlamaConfig(**cfg_kw)
                break
            except TypeError as e:
                drop = next((k for k in optional if k in str(e) and k in cfg_kw), None)
                drop = drop or next((k for k in optional if k in cfg_kw), None)
                if drop is None:
                    raise
                log("LlamaConfig refused %s (%s); retrying without it" % (drop, e))
                del cfg_kw[drop]
        rp = getattr(lcfg, "rope_parameters", None)  # transformers 5: rope settings live here
        if isinstance(rp, dict):
            rp["rope_theta"] = ROPE_THETA
        llama = transformers.LlamaModel(lcfg)
        vision_width = dino.embed_dim + siglip.embed_dim
        projector = Projector(vision_width, PROJECTOR_HIDDEN, LLM_HIDDEN)
        proprio_projector = ProprioProjector(PROPRIO_DIM, LLM_HIDDEN)
        action_head = ActionHead(LLM_HIDDEN)
    # Eager attention and no causal flag: OpenVLA-OFT attends bidirectionally (checked below).
    if hasattr(llama, "set_attn_implementation"):
        try:
            llama.set_attn_implementation("eager")
        except Exception as e:  # noqa: BLE001
            log("set_attn_implementation('eager') failed: %s" % e)
    try:
        llama.config._attn_implementation = "eager"
    except Exception:  # noqa: BLE001
        pass
    for layer in llama.layers:
        layer.self_attn.is_causal = False
    parts = {"dino": dino, "siglip": siglip, "llama": llama, "projector": projector,
             "proprio_projector": proprio_projector, "action_head": action_head}
    for p in parts.values():
        p.to(dev).eval()
    log("built the modules in %.1f s" % (time.time() - t0))
    return parts


def randomize(m, parts, seed, dev):
    """Deterministic, well-conditioned random weights for every parameter (the libraries' own
    inits leave biases at 0 and LayerScale at 1e-5, which would hide mistakes): linear and conv
    weights N(0, 1/fan_in), biases N(0, 0.1^2), norm weights 1 + N(0, 0.1^2), LayerScale
    U(0.1, 0.6),
    class/register tokens N(0, 1), position embeddings N(0, 0.5^2), token embeddings N(0, 1)."""
    torch = m["torch"]
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    with torch.no_grad():
        for mod_name in sorted(parts):
            for name, p in parts[mod_name].named_parameters():
                shape = tuple(p.shape)

                def normal(std, mean=0.0):
                    return torch.randn(shape, generator=g, device=dev) * std + mean
                leaf = name.rsplit(".", 1)[-1]
                if leaf == "gamma":  # timm LayerScale
                    v = torch.rand(shape, generator=g, device=dev) * 0.5 + 0.1
                elif name in ("cls_token", "reg_token"):
                    v = normal(1.0)
                elif name == "pos_embed":
                    v = normal(0.5)
                elif "embed_tokens" in name:
                    v = normal(1.0)
                elif leaf == "bias":
                    v = normal(0.1)
                elif len(shape) == 1:  # LayerNorm / RMSNorm weights
                    v = normal(0.1, 1.0)
                elif len(shape) >= 2:  # Linear [out, in], Conv [out, in, k, k], attn_pool latent
                    fan_in = max(1, math.prod(shape[1:]))
                    v = normal(1.0 / math.sqrt(fan_in))
                else:
                    v = normal(1.0)
                p.copy_(v.to(p.dtype))


def collect_checkpoint(parts):
    """{our name: tensor} for every parameter; errors list unmapped third-party names."""
    out, unmapped = {}, []
    for mod_name in ("dino", "siglip", "llama", "projector", "proprio_projector", "action_head"):
        for name, p in parts[mod_name].named_parameters():
            ours = map_name(mod_name, name)
            if ours is None:
                unmapped.append("%s:%s %s" % (mod_name, name, list(p.shape)))
            else:
                out[ours] = p.detach()
    return out, unmapped


def save_model_dir(m, model_dir, tensors, args, log):
    torch = m["torch"]
    from safetensors.torch import save_file
    os.makedirs(model_dir, exist_ok=True)
    for f in os.listdir(model_dir):
        os.remove(os.path.join(model_dir, f))
    main, side = {}, {"action_head": {}, "proprio_projector": {}}
    for name, t in tensors.items():
        for prefix, stem in SIDE_FILES.items():
            if name.startswith(prefix):
                side[stem][name[len(prefix):]] = t.float().cpu().contiguous()
                break
        else:
            main[name] = t.float().cpu().contiguous()
    t0 = time.time()
    save_file(main, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    for stem, sd in side.items():
        if args.side_format == "pt":  # OFT's files: torch.save of a DDP module's state_dict
            from collections import OrderedDict
            torch.save(OrderedDict(("module." + k, v) for k, v in sd.items()),
                       os.path.join(model_dir, "%s--reference.pt" % stem))
        else:
            save_file(sd, os.path.join(model_dir, "%s--reference.safetensors" % stem),
                      metadata={"format": "pt"})
    if args.vision_blocks == 0:
        cfg = hf_config_json(args.llm_layers)  # statistics inside, as "norm_stats"
    else:
        cfg = specprune_config_json(full_width_shape(args))
        with open(os.path.join(model_dir, "dataset_statistics.json"), "w") as f:
            json.dump(norm_stats(), f, indent=2)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    shutil.copyfile(args.tokenizer, os.path.join(model_dir, "tokenizer.model"))
    log("saved %d tensors (%.2f GB fp32) in %.1f s" % (
        len(tensors), sum(t.numel() for t in tensors.values()) * 4 / 1e9, time.time() - t0))


def full_width_shape(args):
    """The --vision_blocks N layout's shapes (model/config.cc OpenVlaOft7b widths)."""
    n = args.vision_blocks
    return {"image": IMAGE_SIZE, "patch": PATCH, "cams": CAMERAS,
            "dino": {"width": 1024, "depth": n, "heads": 16, "mlp_dim": 4096, "regs": 4,
                     "cls": True, "ls": True, "mean": [0.485, 0.456, 0.406],
                     "std": [0.229, 0.224, 0.225]},
            "siglip": {"width": 1152, "depth": n, "heads": 16, "mlp_dim": 4304, "regs": 0,
                       "cls": False, "ls": False, "mean": [0.5, 0.5, 0.5],
                       "std": [0.5, 0.5, 0.5]},
            "proj_hidden": PROJECTOR_HIDDEN, "hidden": LLM_HIDDEN, "layers": args.llm_layers,
            "heads": LLM_HEADS, "inter": LLM_INTERMEDIATE, "vocab": VOCAB, "pad": PAD_ID}


def make_inputs(m, seed, batch, cams, prompt_lengths, vocab):
    """Images in [0, 1] with structure (smooth gradients + noise), prompt ids, proprio."""
    torch = m["torch"]
    g = torch.Generator().manual_seed(seed + 1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, IMAGE_SIZE), torch.linspace(0, 1, IMAGE_SIZE),
                            indexing="ij")
    imgs = []
    for b in range(batch):
        for c in range(cams):
            base = torch.stack([xx, yy, (xx + yy) / 2]) * (0.3 + 0.2 * c) + 0.1 * b
            imgs.append((base + 0.25 * torch.rand((3, IMAGE_SIZE, IMAGE_SIZE), generator=g))
                        .clamp(0, 1))
    images = torch.stack(imgs).reshape(batch, cams, 3, IMAGE_SIZE, IMAGE_SIZE).contiguous()
    m_max = max(prompt_lengths)
    ids = torch.zeros((batch, m_max), dtype=torch.int64)
    for b, n in enumerate(prompt_lengths):
        ids[b, :n] = torch.randint(3, min(vocab, 32000), (n,), generator=g)
    proprio = (torch.randn((batch, PROPRIO_DIM), generator=g) * 0.5).clamp(-1, 1)
    return {"images": images, "prompt_ids": ids,
            "prompt_lengths": torch.tensor(prompt_lengths, dtype=torch.int64), "proprio": proprio}


def reference_forward(m, parts, inputs, b, dt, dev):
    """Sample b through the third-party modules + ours, in dtype dt. Returns {quantity: tensor}
    with the dump's names (per sample: no batch dimension on the LLM rows)."""
    torch = m["torch"]
    dino, siglip, llama = parts["dino"], parts["siglip"], parts["llama"]
    out = {}
    with torch.no_grad():
        imgs = inputs["images"][b].to(dev, torch.float32)  # [C, 3, S, S] in [0, 1]
        feats = []
        for key, tower in (("featurizer", dino), ("fused_featurizer", siglip)):
            cfg = tower.pretrained_cfg  # timm's own normalization for this model
            mean = torch.tensor(cfg["mean"], device=dev).view(1, 3, 1, 1)
            std = torch.tensor(cfg["std"], device=dev).view(1, 3, 1, 1)
            # OpenVLA normalizes in fp32 (the image transform), then casts to the model dtype.
            x = ((imgs - mean) / std).to(dt)
            n = len(tower.blocks) - 2  # prismatic: get_intermediate_layers(n={len(blocks) - 2})
            try:
                f = tower.get_intermediate_layers(x, n={n})[0]
            except Exception:  # noqa: BLE001  (a timm that wants a list)
                f = tower.get_intermediate_layers(x, n=[n])[0]
            out["vision.tower." + key] = f
            feats.append(f)
        fused = torch.cat(feats, -1)  # [C, P, 2176]: DINOv2 then SigLIP per patch
        out["vision.fused"] = fused
        vision = parts["projector"](fused.reshape(1, -1, fused.shape[-1]))[0]  # [C*P, D]
        out["vision.projected"] = vision
        proprio = parts["proprio_projector"](inputs["proprio"][b].to(dev).to(dt))
        out["proprio.projected"] = proprio
        n_prompt = int(inputs["prompt_lengths"][b])
        ids = [BOS_ID] + [int(i) for i in inputs["prompt_ids"][b][:n_prompt]] + [EOS_ID]
        emb = llama.embed_tokens(torch.tensor(ids, device=dev))
        a = CHUNK * ACTION_DIM
        # ours: model/sequence_layout.h SampleSequence
        seq = torch.cat([emb[:1], vision, proprio[None], emb[1:-1],
                         torch.zeros((a, vision.shape[-1]), device=dev, dtype=dt), emb[-1:]])
        out["llm.inputs_embeds"] = seq
        layers, last = llama_layers(m, llama, seq[None])
        for l, h in enumerate(layers):
            out["llm.layers.%d.output" % l] = h[0]
        out["llm.last_hidden_state"] = last[0]
        p_total = vision.shape[0]
        readout = 1 + p_total + 1 + n_prompt - 1  # SampleRows::readout_begin
        action_in = last[0, readout:readout + a]
        out["action_head.input"] = action_in
        out["actions"] = parts["action_head"](action_in[None])[0]
    return out


def llama_layers(m, llama, h):
    """HF's own decoder layers, rotary embedding and final norm over h [1, T, D], with no mask
    (bidirectional). Returns ([output of each layer], final-norm hidden states)."""
    torch = m["torch"]
    pos = torch.arange(h.shape[1], device=h.device)[None]
    kw = {"attention_mask": None, "position_ids": pos}
    if hasattr(llama, "rotary_emb"):  # transformers >= 4.48: the model computes (cos, sin) once
        kw["position_embeddings"] = llama.rotary_emb(h, pos)
    outs = []
    for layer in llama.layers:
        o = layer(h, **kw)
        h = o[0] if isinstance(o, tuple) else o
        outs.append(h)
    return outs, llama.norm(h)


def reference_checks(m, parts, dev, log):
    """Checks that the reference is the model we mean: RoPE theta, bidirectional attention, the
    4D-mask path of LlamaModel.forward agreeing with the layer loop, timm's normalization."""
    torch = m["torch"]
    llama = parts["llama"]
    res = {}
    hd = LLM_HIDDEN // LLM_HEADS
    rot = getattr(llama, "rotary_emb", None) or getattr(llama.layers[0].self_attn, "rotary_emb",
                                                        None)
    want = 1.0 / (ROPE_THETA ** (torch.arange(0, hd, 2, dtype=torch.float32, device=dev) / hd))
    inv = getattr(rot, "inv_freq", None)
    scaling = float(getattr(rot, "attention_scaling", 1.0))
    rope_ok = inv is not None and torch.allclose(inv.float(), want, rtol=1e-5, atol=0)
    res["rope_inv_freq"] = {"ok": bool(rope_ok and scaling == 1.0), "theta": ROPE_THETA,
                            "attention_scaling": scaling}
    with torch.no_grad():
        g = torch.Generator(device=dev).manual_seed(7)
        h = torch.randn((1, 12, LLM_HIDDEN), generator=g, device=dev)
        layers, last = llama_layers(m, llama, h)
        h2 = h.clone()
        h2[0, -1] += 1.0
        layers2, _ = llama_layers(m, llama, h2)
        changed = float((layers2[0][0, 0] - layers[0][0, 0]).abs().max())
        res["bidirectional"] = {"ok": changed > 0, "row0_change_when_last_row_changes": changed}
        try:
            mask = torch.zeros((1, 1, 12, 12), device=dev, dtype=h.dtype)
            o = llama(inputs_embeds=h, attention_mask=mask,
                      position_ids=torch.arange(12, device=dev)[None]).last_hidden_state
            rel = float((o - last).abs().max() / last.abs().max())
            res["llama_model_forward_4d_mask"] = {"max_rel_vs_layer_loop": rel,
                                                  "agrees": rel <= 1e-5}
        except Exception as e:  # noqa: BLE001  (informative only)
            res["llama_model_forward_4d_mask"] = {"error": repr(e)[:300]}
    res["timm_normalization"] = {
        "featurizer": {"mean": list(parts["dino"].pretrained_cfg["mean"]),
                       "std": list(parts["dino"].pretrained_cfg["std"])},
        "fused_featurizer": {"mean": list(parts["siglip"].pretrained_cfg["mean"]),
                             "std": list(parts["siglip"].pretrained_cfg["std"])}}
    res["timm_towers"] = {
        k: {"blocks": len(parts[k].blocks), "num_prefix_tokens": int(parts[k].num_prefix_tokens),
            "embed_dim": int(parts[k].embed_dim), "no_embed_class": bool(parts[k].no_embed_class),
            "pos_embed": list(parts[k].pos_embed.shape),
            "mlp_act": type(parts[k].blocks[0].mlp.act).__name__,
            "norm_eps": float(parts[k].blocks[0].norm1.eps)}
        for k in ("dino", "siglip")}
    log("reference checks: %s" % json.dumps({k: v for k, v in res.items()
                                             if k in ("rope_inv_freq", "bidirectional")}))
    return res


def compare(m, ours, ref):
    torch = m["torch"]
    a, r = ours.double(), ref.double().to(ours.device)
    if a.shape != r.shape:
        return {"error": "shape %s vs reference %s" % (list(a.shape), list(r.shape))}
    diff = (a - r).abs()
    ref_max = float(r.abs().max()) if r.numel() else 0.0
    max_abs = float(diff.max()) if diff.numel() else 0.0
    finite = bool(torch.isfinite(a).all())
    return {"max_abs": max_abs, "ref_max_abs": ref_max,
            "max_rel": (max_abs / ref_max) if ref_max > 0 else (0.0 if max_abs == 0 else math.inf),
            "rms_rel": float(diff.norm() / r.norm()) if float(r.norm()) > 0 else 0.0,
            "finite": finite}


def dump_per_sample(m, dump, name, b, length):
    """Sample b of a dump quantity, without padding rows."""
    t = dump[name]
    if name.startswith("vision.tower.") or name == "vision.fused":
        return t.reshape(-1, CAMERAS, *t.shape[1:])[b]
    if name.startswith("llm.") and name != "llm.lengths":
        return t[b, :length]
    return t[b]


# ---------------------------------------------------------------------------------------------

def main_check(args, report, log):
    mods, missing = import_stack()
    if missing:
        msg = ("skipped: missing Python packages: %s (need torch, transformers, timm, "
               "safetensors)" % ", ".join(missing))
        print("reference_check: " + msg, file=sys.stderr)
        report.update({"status": "skipped", "missing": missing, "reason": msg})
        return EXIT_SKIP
    torch = mods["torch"]
    from safetensors.torch import load_file, save_file
    report["versions"] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": getattr(torch.version, "cuda", None),
        "transformers": mods["transformers"].__version__, "timm": mods["timm"].__version__,
        "safetensors": getattr(mods["safetensors"], "__version__", "?")}
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        report.update({"status": "error", "reason": "--device cuda but torch sees no GPU"})
        return EXIT_FAIL
    report["device"] = device
    if device.startswith("cuda"):
        report["device_name"] = torch.cuda.get_device_name(0)
    # fp32 means fp32: no TF32 in matmuls or convolutions (the dump tool does the same).
    def has(obj, name):  # torch 1.x's backend modules raise AssertionError for unknown names
        try:
            return hasattr(obj, name)
        except Exception:  # noqa: BLE001
            return False
    if has(torch.backends.cuda.matmul, "fp32_precision") and has(torch.backends.cudnn, "conv"):
        # torch >= 2.9's API; mixing it with the legacy flags is an error there
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        report["tf32"] = "off (fp32_precision = ieee)"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        report["tf32"] = "off (allow_tf32 = False)"
    dtypes = [d for d in args.dtypes.split(",") if d]
    if any(d not in ("fp32", "bf16") for d in dtypes) or not dtypes:
        report.update({"status": "error", "reason": "--dtypes takes fp32 and/or bf16"})
        return EXIT_USAGE
    os.makedirs(args.work, exist_ok=True)
    model_dir = os.path.join(args.work, "model")
    timings = report.setdefault("seconds", {})

    t0 = time.time()
    parts = build_reference(mods, args, device, log)
    randomize(mods, parts, args.seed, device)
    timings["build"] = time.time() - t0
    tensors, unmapped = collect_checkpoint(parts)
    if unmapped:  # a timm/transformers version with other parameter names: the table needs a row
        report.update({"status": "error",
                       "reason": "parameters without a row in NAME_TABLE: " + ", ".join(unmapped)})
        return EXIT_FAIL
    report["checks"] = reference_checks(mods, parts, device, log)
    if not report["checks"]["bidirectional"]["ok"] or not report["checks"]["rope_inv_freq"]["ok"]:
        report.update({"status": "error",
                       "reason": "the reference Llama is not the model we compare with (causal "
                                 "attention or another RoPE): see checks"})
        return EXIT_FAIL
    t0 = time.time()
    save_model_dir(mods, model_dir, tensors, args, log)
    timings["save"] = time.time() - t0
    report["layout"] = {"config_json": "hf" if args.vision_blocks == 0 else "specprune",
                        "vision_blocks": args.vision_blocks or "full (24 / 27)",
                        "llm_layers": args.llm_layers, "side_files": args.side_format,
                        "parameters": sum(t.numel() for t in tensors.values())}

    lengths = [17, 29][:args.batch] if args.batch <= 2 else [17 + 5 * i for i in range(args.batch)]
    inputs = make_inputs(mods, args.seed, args.batch, CAMERAS, lengths, VOCAB)
    inputs_path = os.path.join(args.work, "inputs.safetensors")
    save_file(dict(inputs), inputs_path)

    results = report.setdefault("quantities", {})
    failed = []
    ref_cache = {}

    def reference(dt_name):
        if dt_name not in ref_cache:
            t = time.time()
            if dt_name == "fp32":
                use, dt = parts, torch.float32
            else:  # a bf16 copy (round to nearest even, as our loader's copy_ into bf16)
                import copy
                dt = torch.bfloat16
                use = {k: copy.deepcopy(v).to(dt) for k, v in parts.items()}
            ref_cache[dt_name] = [reference_forward(mods, use, inputs, b, dt, device)
                                  for b in range(args.batch)]
            del use
            timings["reference_" + dt_name] = time.time() - t
        return ref_cache[dt_name]

    for dt_name in dtypes:
        out_path = os.path.join(args.work, "dump_%s.safetensors" % dt_name)
        rc, text, secs = run_dump(args.dump_tool, model_dir, inputs_path, out_path, device, dt_name)
        timings["dump_" + dt_name] = secs
        if rc != 0 and args.side_format == "pt" and ".pt" in text:
            # Our .pt reader refused torch's file: record it, go on with safetensors side files.
            report["checks"]["pt_side_files"] = {"ok": False, "error": text[-2000:]}
            failed.append("pt_side_files")
            args.side_format = "safetensors"
            save_model_dir(mods, model_dir, tensors, args, log)
            rc, text, secs = run_dump(args.dump_tool, model_dir, inputs_path, out_path, device,
                                      dt_name)
        elif rc == 0 and args.side_format == "pt":
            report["checks"]["pt_side_files"] = {"ok": True}
        log(text.strip().splitlines()[-1] if text.strip() else "(no output)")
        if rc != 0:
            report.setdefault("dump_errors", {})[dt_name] = text[-4000:]
            failed.append("dump_" + dt_name)
            continue
        header = read_safetensors_header(out_path)
        dump_cfg = json.loads(header.get("__metadata__", {}).get("config", "{}"))
        problems = check_dump_header(out_path, dump_cfg, args.batch, lengths) if dump_cfg else [
            "no config in the dump's metadata"]
        if problems:
            report.setdefault("dump_errors", {})[dt_name] = problems
            failed.append("dump_layout_" + dt_name)
            continue
        report.setdefault("dump_metadata", {})[dt_name] = {
            k: v for k, v in header["__metadata__"].items() if k != "config"}
        dump = {k: v.to(device) for k, v in load_file(out_path).items()}
        dump_lengths = [int(x) for x in dump["llm.lengths"]]
        refs = {"same_dtype": reference(dt_name)}
        if dt_name == "bf16":
            refs["fp32"] = reference("fp32")
        tol = args.fp32_tol if dt_name == "fp32" else args.bf16_tol
        # Served path vs the dump's replica: the intermediates are the served forward's.
        targets = {"served_vs_replica": None}
        targets.update({n: refs for n in refs["same_dtype"][0]})
        targets["replica.actions"] = refs
        for name, against in targets.items():
            entry = {"tolerance": tol}
            per_ref = {}
            for ref_name, ref in (against or {"served_vs_replica": None}).items():
                worst = None
                for b in range(args.batch):
                    if ref is None:
                        c = compare(mods, dump["replica.actions"][b], dump["actions"][b])
                    else:
                        ours = dump_per_sample(mods, dump, name, b, dump_lengths[b])
                        c = compare(mods, ours, ref[b]["actions" if name == "replica.actions"
                                                       else name])
                    if "error" in c or worst is None or c["max_rel"] > worst["max_rel"]:
                        worst = c
                    if "error" in c:
                        break
                per_ref[ref_name] = worst
            entry["vs"] = per_ref
            ok = [v.get("finite", False) and v.get("max_rel", math.inf) <= tol
                  for v in per_ref.values() if "error" not in v]
            if dt_name == "bf16":  # loose: against the bf16 or the fp32 reference
                entry["pass"] = bool(ok) and any(ok)
            else:
                entry["pass"] = bool(ok) and all(ok) and len(ok) == len(per_ref)
            results.setdefault(dt_name, {})[name] = entry
            if not entry["pass"]:
                failed.append("%s:%s" % (dt_name, name))
            summary = " ".join("%s max_rel %.2e" % (k, v.get("max_rel", float("nan")))
                               for k, v in per_ref.items())
            log("%-5s %-28s %s  %s" % (dt_name, name, summary, "ok" if entry["pass"] else "FAIL"))
    report["failed"] = failed
    report["status"] = "pass" if not failed else "fail"
    if not args.keep:
        shutil.rmtree(model_dir, ignore_errors=True)
    return EXIT_PASS if not failed else EXIT_FAIL


# ---------------------------------------------------------------------------------------------
# --self_test: what can run without torch (the ctest on a CPU host).

def fake_third_party_names(shape):
    """The parameter names (and shapes) timm / transformers give these modules, as read in their
    source (timm 1.0 vision_transformer.py VisionTransformer/Block/Attention/Mlp/LayerScale,
    AttentionPoolLatent; transformers LlamaModel), at the self test's small shape."""
    out = {}
    p = shape["patch"]
    grid = (shape["image"] // p) ** 2
    for mod in ("dino", "siglip"):
        t = shape[mod]
        w, hid = t["width"], t["mlp_dim"]
        names = {"pos_embed": [1, grid, w], "patch_embed.proj.weight": [w, 3, p, p],
                 "patch_embed.proj.bias": [w], "norm.weight": [w], "norm.bias": [w]}
        if t["cls"]:
            names["cls_token"] = [1, 1, w]
        if t["regs"]:
            names["reg_token"] = [1, t["regs"], w]
        for i in range(t["depth"]):
            b = "blocks.%d." % i
            names.update({b + "norm1.weight": [w], b + "norm1.bias": [w],
                          b + "attn.qkv.weight": [3 * w, w], b + "attn.qkv.bias": [3 * w],
                          b + "attn.proj.weight": [w, w], b + "attn.proj.bias": [w],
                          b + "norm2.weight": [w], b + "norm2.bias": [w],
                          b + "mlp.fc1.weight": [hid, w], b + "mlp.fc1.bias": [hid],
                          b + "mlp.fc2.weight": [w, hid], b + "mlp.fc2.bias": [w]})
            if t["ls"]:
                names.update({b + "ls1.gamma": [w], b + "ls2.gamma": [w]})
        if mod == "siglip":
            names.update({"attn_pool.latent": [1, 1, w], "attn_pool.q.weight": [w, w],
                          "attn_pool.kv.weight": [2 * w, w], "attn_pool.proj.weight": [w, w],
                          "attn_pool.norm.weight": [w], "attn_pool.mlp.fc1.weight": [hid, w]})
        out[mod] = names
    d, inter = shape["hidden"], shape["inter"]
    llama = {"embed_tokens.weight": [shape["vocab"], d], "norm.weight": [d]}
    for i in range(shape["layers"]):
        b = "layers.%d." % i
        for x in "qkvo":
            llama[b + "self_attn.%s_proj.weight" % x] = [d, d]
        llama.update({b + "mlp.gate_proj.weight": [inter, d], b + "mlp.up_proj.weight": [inter, d],
                      b + "mlp.down_proj.weight": [d, inter], b + "input_layernorm.weight": [d],
                      b + "post_attention_layernorm.weight": [d]})
    out["llama"] = llama
    vw = shape["dino"]["width"] + shape["siglip"]["width"]
    ph = shape["proj_hidden"]
    out["projector"] = {"fc1.weight": [ph, vw], "fc1.bias": [ph], "fc2.weight": [d, ph],
                        "fc2.bias": [d], "fc3.weight": [d, d], "fc3.bias": [d]}
    out["proprio_projector"] = {"fc1.weight": [d, PROPRIO_DIM], "fc1.bias": [d],
                                "fc2.weight": [d, d], "fc2.bias": [d]}
    ah = {"model.layer_norm1.weight": [d * ACTION_DIM], "model.layer_norm1.bias": [d * ACTION_DIM],
          "model.fc1.weight": [d, d * ACTION_DIM], "model.fc1.bias": [d],
          "model.layer_norm2.weight": [d], "model.layer_norm2.bias": [d],
          "model.fc2.weight": [ACTION_DIM, d], "model.fc2.bias": [ACTION_DIM]}
    for j in range(ACTION_HEAD_BLOCKS):
        b = "model.mlp_resnet_blocks.%d.ffn." % j
        ah.update({b + "0.weight": [d], b + "0.bias": [d], b + "1.weight": [d, d],
                   b + "1.bias": [d]})
    out["action_head"] = ah
    return out


def self_test_inputs(path, rnd, batch, cams, image, lengths, vocab, proprio_dim, drop=None,
                     nan=None, image_shape=None):
    m_max = max(lengths)
    shape = image_shape or [batch, cams, 3, image, image]
    t = {"images": ("F32", shape, [rnd.random() for _ in range(math.prod(shape))]),
         "prompt_ids": ("I64", [batch, m_max],
                        [rnd.randrange(3, vocab) for _ in range(batch * m_max)]),
         "prompt_lengths": ("I64", [batch], list(lengths)),
         "proprio": ("F32", [batch, proprio_dim],
                     [rnd.uniform(-1, 1) for _ in range(batch * proprio_dim)])}
    if nan:
        t[nan][2][1] = float("nan")
    if drop:
        del t[drop]
    write_safetensors_stdlib(path, t)


def self_test(args, log):
    if not args.dump_tool or not os.access(args.dump_tool, os.X_OK):
        log("--self_test needs --dump_tool (the specprune_reference_dump executable)")
        return EXIT_USAGE
    os.makedirs(args.work, exist_ok=True)
    failures = []

    def expect(cond, what):
        log(("ok    " if cond else "FAIL  ") + what)
        if not cond:
            failures.append(what)

    rnd = random.Random(args.seed)
    # 1. The name table at a small shape: fake third-party names -> our names -> our loader.
    shape = {"image": 28, "patch": 14, "cams": 2,
             "dino": {"width": 32, "depth": 3, "heads": 2, "mlp_dim": 64, "regs": 4, "cls": True,
                      "ls": True, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
             "siglip": {"width": 48, "depth": 3, "heads": 2, "mlp_dim": 80, "regs": 0,
                        "cls": False, "ls": False, "mean": [0.5] * 3, "std": [0.5] * 3},
             "proj_hidden": 96, "hidden": 64, "layers": 2, "heads": 4, "inter": 96,
             "vocab": 600, "pad": 0}
    model_dir = os.path.join(args.work, "table_model")
    shutil.rmtree(model_dir, ignore_errors=True)
    os.makedirs(model_dir)
    main, side, unmapped = {}, {"action_head": {}, "proprio_projector": {}}, []
    for mod, names in fake_third_party_names(shape).items():
        for name, shp in names.items():
            ours = map_name(mod, name)
            if ours is None:
                unmapped.append("%s:%s" % (mod, name))
                continue
            n = math.prod(shp)
            scale = 1.0 / math.sqrt(max(1, math.prod(shp[1:]))) if len(shp) > 1 else 0.1
            vals = [rnd.gauss(0, scale) + (1.0 if len(shp) == 1 and name.endswith("weight") else 0)
                    for _ in range(n)]
            for prefix, stem in SIDE_FILES.items():
                if ours.startswith(prefix):
                    side[stem][ours[len(prefix):]] = ("F32", shp, vals)
                    break
            else:
                main[ours] = ("F32", shp, vals)
    expect(not unmapped, "every third-party name has a NAME_TABLE row (%s)" % unmapped)
    write_safetensors_stdlib(os.path.join(model_dir, "model.safetensors"), main, {"format": "pt"})
    for stem, t in side.items():
        write_safetensors_stdlib(os.path.join(model_dir, "%s--reference.safetensors" % stem), t)
    cfg = specprune_config_json(shape)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    shutil.copyfile(args.tokenizer, os.path.join(model_dir, "tokenizer.model"))
    with open(os.path.join(model_dir, "dataset_statistics.json"), "w") as f:
        json.dump(norm_stats(), f)
    lengths = [5, 9]
    inputs = os.path.join(args.work, "table_inputs.safetensors")
    self_test_inputs(inputs, rnd, 2, 2, 28, lengths, 600, PROPRIO_DIM)
    out = os.path.join(args.work, "table_dump.safetensors")
    rc, text, _ = run_dump(args.dump_tool, model_dir, inputs, out, "cpu", "fp32")
    expect(rc == 0, "dump tool loads the table-mapped checkpoint (rc %d): %s" % (
        rc, text.strip()[-600:] if rc else "ok"))
    if rc == 0:
        problems = check_dump_header(out, cfg["specprune"], 2, lengths)
        expect(not problems, "dump names/shapes as documented %s" % problems)
        diff = read_safetensors_stdlib(out, "replica.max_abs_diff")[0]
        expect(diff <= 1e-5, "replica equals VlaModel::Forward (max abs diff %.3g)" % diff)
        meta = read_safetensors_header(out).get("__metadata__", {})
        expect(meta.get("dtype") == "fp32" and meta.get("device") == "cpu",
               "metadata names device and dtype (%s)" % {k: meta.get(k) for k in
                                                          ("device", "dtype", "tf32")})
    rc, text, _ = run_dump(args.dump_tool, model_dir, inputs, out, "cpu", "bf16")
    expect(rc == 0, "bf16 dump runs (rc %d) %s" % (rc, text.strip()[-300:] if rc else ""))

    # 2. The HF config.json of the default layout resolves to the 7B towers + our LLM size.
    hf_dir = os.path.join(args.work, "hf_config")
    os.makedirs(hf_dir, exist_ok=True)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(hf_config_json(2), f, indent=2)
    p = subprocess.run([args.dump_tool, "--model_dir", hf_dir, "--print_config"],
                       capture_output=True, text=True)
    expect(p.returncode == 0, "HF config.json accepted by model/hf_config.cc %s" % p.stderr[-300:])
    if p.returncode == 0:
        c = json.loads(p.stdout)
        t0, t1 = c["towers"]
        got = {"towers": [(t["name"], t["width"], t["depth"], t["output_block"],
                           t["num_register_tokens"], t["class_token"], t["layer_scale"],
                           t["gelu_tanh"], t["mean"], t["std"]) for t in (t0, t1)],
               "llm": (c["llm"]["hidden"], c["llm"]["layers"], c["llm"]["heads"],
                       c["llm"]["intermediate"], c["llm"]["vocab_size"], c["llm"]["rms_norm_eps"],
                       c["llm"]["rope_theta"], c["llm"]["bos_token_id"], c["llm"]["eos_token_id"]),
               "image": (c["image_size"], len(c["cameras"]), c["projector_hidden"],
                         c["action_head_hidden"], c["chunk_size"], c["action_dim"],
                         c["proprio_dim"])}
        f32 = lambda v: [struct.unpack("<f", struct.pack("<f", x))[0] for x in v]  # noqa: E731
        want = {"towers": [("featurizer", 1024, 24, 22, 4, True, True, False,
                            f32([0.485, 0.456, 0.406]), f32([0.229, 0.224, 0.225])),
                           ("fused_featurizer", 1152, 27, 25, 0, False, False, False,
                            [0.5] * 3, [0.5] * 3)],
                "llm": (LLM_HIDDEN, 2, LLM_HEADS, LLM_INTERMEDIATE, VOCAB, RMS_EPS, ROPE_THETA,
                        BOS_ID, EOS_ID),
                "image": (IMAGE_SIZE, CAMERAS, PROJECTOR_HIDDEN, LLM_HIDDEN, CHUNK, ACTION_DIM,
                          PROPRIO_DIM)}
        got["towers"] = [tuple(list(t[:8]) + [f32(t[8]), f32(t[9])]) for t in got["towers"]]
        expect(got == want, "HF config resolves to the shapes the reference builds\n  got  %s\n"
               "  want %s" % (got, want))

    # 3. Bad inputs are refused, naming the tensor.
    cases = [("missing proprio", {"drop": "proprio"}, '"proprio" is missing'),
             ("NaN in proprio", {"nan": "proprio"}, '"proprio" has a non-finite value'),
             ("NaN in images", {"nan": "images"}, '"images" has a non-finite value'),
             ("wrong image shape", {"image_shape": [2, 2, 3, 28, 27]}, '"images" has shape'),
             ("images of another rank", {"image_shape": [2, 3, 28, 28]}, '"images" has shape')]
    for what, kw, needle in cases:
        bad = os.path.join(args.work, "bad_inputs.safetensors")
        self_test_inputs(bad, rnd, 2, 2, 28, lengths, 600, PROPRIO_DIM, **kw)
        rc, text, _ = run_dump(args.dump_tool, model_dir, bad, out + ".bad", "cpu", "fp32")
        expect(rc == 1 and needle in text, "%s: exit 1 naming the tensor (rc %d: %s)" % (
            what, rc, text.strip().splitlines()[-1] if text.strip() else ""))
    bad = os.path.join(args.work, "bad_inputs.safetensors")
    self_test_inputs(bad, rnd, 2, 2, 28, lengths, 600, PROPRIO_DIM)
    t = {"images": ("F32", [2, 2, 3, 28, 28], [0.5] * (2 * 2 * 3 * 28 * 28)),
         "prompt_ids": ("I64", [2, 9], [700] * 18), "prompt_lengths": ("I64", [2], [5, 9]),
         "proprio": ("F32", [2, PROPRIO_DIM], [0.0] * 16)}
    write_safetensors_stdlib(bad, t)
    rc, text, _ = run_dump(args.dump_tool, model_dir, bad, out + ".bad", "cpu", "fp32")
    expect(rc == 1 and '"prompt_ids"[0, 0] = 700' in text, "token id >= vocab refused (rc %d)" % rc)
    t["prompt_ids"] = ("I64", [2, 9], [5] * 18)
    t["prompt_lengths"] = ("I64", [2], [5, 10])
    write_safetensors_stdlib(bad, t)
    rc, text, _ = run_dump(args.dump_tool, model_dir, bad, out + ".bad", "cpu", "fp32")
    expect(rc == 1 and '"prompt_lengths"[1] = 10' in text, "prompt length > M refused (rc %d)" % rc)
    t["prompt_lengths"] = ("I64", [2], [5, 9])
    t["images"] = ("F32", [2, 2, 3, 28, 28], [1.5] * (2 * 2 * 3 * 28 * 28))
    write_safetensors_stdlib(bad, t)
    rc, text, _ = run_dump(args.dump_tool, model_dir, bad, out + ".bad", "cpu", "fp32")
    expect(rc == 1 and "outside [0, 1]" in text, "images outside [0, 1] refused (rc %d)" % rc)

    # 4. The embedded tiny model (one tower, its own config) through the same tool.
    tiny = os.path.join(REPO, "models", "tiny")
    with open(os.path.join(tiny, "config.json")) as f:
        tiny_cfg = json.load(f)["specprune"]
    tiny_in = os.path.join(args.work, "tiny_inputs.safetensors")
    self_test_inputs(tiny_in, rnd, 2, len(tiny_cfg["cameras"]), tiny_cfg["image_size"], [3, 7],
                     tiny_cfg["llm"]["vocab_size"], tiny_cfg["proprio_dim"])
    tiny_out = os.path.join(args.work, "tiny_dump.safetensors")
    rc, text, _ = run_dump(args.dump_tool, tiny, tiny_in, tiny_out, "cpu", "fp32")
    expect(rc == 0, "dump tool runs models/tiny (rc %d) %s" % (rc, text.strip()[-300:] if rc
                                                               else ""))
    if rc == 0:
        problems = check_dump_header(tiny_out, tiny_cfg, 2, [3, 7])
        expect(not problems, "models/tiny dump names/shapes as documented %s" % problems)
        diff = read_safetensors_stdlib(tiny_out, "replica.max_abs_diff")[0]
        expect(diff <= 1e-5, "models/tiny replica equals VlaModel::Forward (%.3g)" % diff)

    # 5. Without torch & co the check itself is skipped with exit 77, naming what is missing.
    _, missing = import_stack()
    if missing:
        j = os.path.join(args.work, "skip.json")
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--dump_tool",
                            args.dump_tool, "--work", os.path.join(args.work, "skip"),
                            "--json", j], capture_output=True, text=True)
        with open(j) as f:
            skipped = json.load(f)
        expect(p.returncode == EXIT_SKIP and missing[0] in p.stderr and
               skipped.get("status") == "skipped",
               "without %s the check exits 77 and says so (rc %d: %s)" % (
                   ", ".join(missing), p.returncode, p.stderr.strip()))
    else:
        log("skip  the exit-77 case: torch, transformers, timm and safetensors are installed")
    log("self test: %d failure(s)" % len(failures))
    return EXIT_PASS if not failures else EXIT_FAIL


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump_tool", help="the specprune_reference_dump executable")
    ap.add_argument("--work", required=True, help="working directory (model, inputs, dumps)")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--device", help="cuda or cpu (default: cuda when torch sees one)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--vision_blocks", type=int, default=0,
                    help="0: full-depth towers with an HF config.json; N >= 2: N blocks each")
    ap.add_argument("--llm_layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2, help="samples (different prompt lengths)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fp32_tol", type=float, default=1e-3)
    ap.add_argument("--bf16_tol", type=float, default=5e-2)
    ap.add_argument("--side_format", choices=("pt", "safetensors"), default="pt",
                    help="action head / proprio projector files: OFT's torch.save .pt, or "
                         "safetensors")
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                    help="SentencePiece model copied into the model directory (the loader needs "
                         "one; the inputs are token ids)")
    ap.add_argument("--keep", action="store_true", help="keep the model directory (GBs)")
    ap.add_argument("--self_test", action="store_true",
                    help="check the table, configs, dump tool and skip path without torch")
    args = ap.parse_args()
    if args.vision_blocks == 1 or args.vision_blocks < 0:
        ap.error("--vision_blocks must be 0 (full depth) or >= 2")
    if args.llm_layers < 1 or args.batch < 1:
        ap.error("--llm_layers and --batch must be >= 1")

    def log(msg):
        print("reference_check: " + msg, file=sys.stderr, flush=True)

    if args.self_test:
        return self_test(args, log)
    report = {"tool": "tools/reference_check.py", "issue": "#28 item 6",
              "metric": "max_rel = max|ours - ref| / max|ref| per quantity (worst sample); "
                        "rms_rel = ||ours - ref|| / ||ref||",
              "tolerances": {"fp32": args.fp32_tol, "bf16": args.bf16_tol},
              "assumptions": ASSUMPTIONS,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t0 = time.time()
    try:
        if not args.dump_tool or not os.access(args.dump_tool, os.X_OK):
            _, missing = import_stack()
            if missing:  # the skip takes precedence: this host cannot run the check at all
                rc = main_check(args, report, log)
            else:
                report.update({"status": "error", "reason": "--dump_tool is not an executable"})
                rc = EXIT_USAGE
        else:
            rc = main_check(args, report, log)
    except Exception as e:  # noqa: BLE001  a broken step is a failure with its trace in the JSON
        import traceback
        report.update({"status": "error", "reason": repr(e)[:2000],
                       "traceback": traceback.format_exc()[-6000:]})
        log("error: %r" % e)
        rc = EXIT_FAIL
    report["seconds_total"] = time.time() - t0
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    log("status %s (exit %d)%s" % (report.get("status"), rc,
                                   ", JSON " + args.json if args.json else ""))
    return rc


if __name__ == "__main__":
    sys.exit(main())
