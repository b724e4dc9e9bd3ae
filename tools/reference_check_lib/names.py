"""The constants of the check: shapes, third-party model ids, THE name table (third-party
parameter names -> our checkpoint names) and what the check cannot verify.

Part of tools/reference_check.py (issue #28 item 6); see its docstring."""

import os
import re

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_SKIP = 0, 1, 2, 77

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "tools", "reference_check.py")  # the entry point (its self test runs it)
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
