"""The check itself: build the reference, save it, run our dump per dtype, compare.

Part of tools/reference_check.py (issue #28 item 6); see its docstring."""

import json
import math
import os
import platform
import shutil
import sys
import time

from .files import check_dump_header, read_safetensors_header, run_dump
from .names import CAMERAS, EXIT_FAIL, EXIT_PASS, EXIT_SKIP, EXIT_USAGE, VOCAB
from .reference import (
    build_reference, collect_checkpoint, compare, dump_per_sample, import_stack, make_inputs,
    randomize, reference_checks, reference_forward, save_model_dir)


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
