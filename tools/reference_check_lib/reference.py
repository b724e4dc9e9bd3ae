"""The reference side: third-party modules (torch, transformers, timm, safetensors; imported
lazily), random weights, the model directory, the inputs and the reference forward.

Part of tools/reference_check.py (issue #28 item 6); see its docstring."""

import contextlib
import json
import math
import os
import shutil
import time

from .files import hf_config_json, norm_stats, specprune_config_json
from .names import (
    ACTION_DIM, ACTION_HEAD_BLOCKS, BOS_ID, CAMERAS, CHUNK, DINO_TIMM_ID, EOS_ID, IMAGE_SIZE,
    LLM_HEADS, LLM_HIDDEN, LLM_INTERMEDIATE, PAD_ID, PATCH, PROJECTOR_HIDDEN, PROPRIO_DIM,
    RMS_EPS, ROPE_THETA, SIDE_FILES, SIGLIP_TIMM_ID, VOCAB, map_name)


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
