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
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference_check_lib.check import main_check  # noqa: E402
from reference_check_lib.names import (  # noqa: E402
    ASSUMPTIONS, DEFAULT_TOKENIZER, EXIT_FAIL, EXIT_USAGE)
from reference_check_lib.reference import import_stack  # noqa: E402
from reference_check_lib.self_test import self_test  # noqa: E402


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
