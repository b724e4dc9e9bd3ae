"""--self_test: what can run without torch (the ctest on a CPU host).

Part of tools/reference_check.py (issue #28 item 6); see its docstring."""

import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys

from .files import (
    check_dump_header, hf_config_json, norm_stats, read_safetensors_header,
    read_safetensors_stdlib, run_dump, specprune_config_json, write_safetensors_stdlib)
from .names import (
    ACTION_DIM, ACTION_HEAD_BLOCKS, BOS_ID, CAMERAS, CHUNK, EOS_ID, EXIT_FAIL, EXIT_PASS,
    EXIT_SKIP, EXIT_USAGE, IMAGE_SIZE, LLM_HEADS, LLM_HIDDEN, LLM_INTERMEDIATE,
    PROJECTOR_HIDDEN, PROPRIO_DIM, REPO, RMS_EPS, ROPE_THETA, SCRIPT, SIDE_FILES, VOCAB,
    map_name)
from .reference import import_stack


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
        p = subprocess.run([sys.executable, SCRIPT, "--dump_tool",
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
