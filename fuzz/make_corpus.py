#!/usr/bin/python3
"""Regenerates the seed corpora in fuzz/corpus/<target>/ (fuzz/README.md).

Seeds come from the repository's own data (models/tiny, tests/data, the HF config of
tests/hf_checkpoint_test.cc, the CPython pickle of tests/checkpoint_test.cc) plus small images and
PredictRequests built here. Needs Debian's python3-pil and python3-protobuf and protoc; run it with
/usr/bin/python3 from anywhere:  /usr/bin/python3 fuzz/make_corpus.py
Deterministic: running it twice gives the same bytes. It replaces corpus/, never regressions/.
"""

import collections
import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import types

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def read(rel):
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read()


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


# ---- images -------------------------------------------------------------------------------------

def gradient(w, h, mode="RGB"):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 255) // max(w - 1, 1), (y * 255) // max(h - 1, 1), (x ^ y) & 255)
                 for y in range(h) for x in range(w)])
    return img if mode == "RGB" else img.convert(mode)


def encode(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def images():
    out = collections.OrderedDict()
    out["rgb8x8.png"] = encode(gradient(8, 8), "PNG")
    out["gray6x5.png"] = encode(gradient(6, 5, "L"), "PNG")
    out["palette7x4.png"] = encode(gradient(7, 4).convert("P", palette=Image.ADAPTIVE, colors=8),
                                   "PNG")
    out["rgba5x5.png"] = encode(gradient(5, 5, "RGBA"), "PNG")
    out["gray16_4x4.png"] = encode(gradient(4, 4, "L").convert("I;16"), "PNG")
    out["interlaced9x9.png"] = encode(gradient(9, 9), "PNG", optimize=False, interlace=1)
    out["baseline16x16.jpg"] = encode(gradient(16, 16), "JPEG", quality=80)
    out["progressive17x9.jpg"] = encode(gradient(17, 9), "JPEG", quality=60, progressive=True)
    out["gray8x8.jpg"] = encode(gradient(8, 8, "L"), "JPEG", quality=70)
    out["cmyk8x8.jpg"] = encode(gradient(8, 8, "CMYK"), "JPEG", quality=70)  # rejected
    out["s444_8x8.jpg"] = encode(gradient(8, 8), "JPEG", quality=90, subsampling=0)
    return out


# ---- request_validation -------------------------------------------------------------------------

def load_stubs():
    tmp = tempfile.mkdtemp(prefix="specprune_fuzz_pb_")
    subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), "--python_out=" + tmp,
                    "specprune/v1/vla_service.proto"], check=True)
    sys.path.insert(0, tmp)
    from specprune.v1 import vla_service_pb2  # noqa: E402
    return vla_service_pb2, tmp


def requests(pb, imgs):
    def base(**kw):
        r = pb.PredictRequest(robot_id="robot-1", episode_id="ep.7", step=3,
                              instruction="pick up the red block and place it on the plate",
                              proprio=[0.1, -0.2, 0.3, 0.0, 0.5, -0.6, 0.04, -0.04],
                              unnorm_key="libero_spatial")
        for k, v in kw.items():
            if k == "proprio":
                del r.proprio[:]
                r.proprio.extend(v)
            else:
                setattr(r, k, v)
        return r

    out = collections.OrderedDict()
    r = base()
    r.images.add(camera="main", encoded=imgs["rgb8x8.png"])
    r.images.add(camera="wrist", encoded=imgs["baseline16x16.jpg"])
    out["predict_named_png_jpeg.pb"] = r
    r = base(unnorm_key="")
    r.images.add(encoded=imgs["progressive17x9.jpg"])
    r.images.add(raw=pb.RawImage(height=2, width=3, channels=3, pixels=bytes(range(18))))
    out["predict_unnamed_raw.pb"] = r
    r = base(step=0)
    r.images.add(camera="wrist", encoded=imgs["gray6x5.png"])
    r.images.add(camera="main", encoded=imgs["palette7x4.png"])
    r.pruning.method = pb.PRUNING_METHOD_FASTV
    r.pruning.alpha = 1.5
    r.pruning.keep_ratio = 0.25
    r.pruning.diagnostic = True
    r.pruning.config_json = compact({"fastv": {"layer": 1, "keep_ratio": 0.5}})
    out["predict_pruning_override.pb"] = r
    r = base(unnorm_key="libero_object")
    r.images.add(camera="main",
                 raw=pb.RawImage(height=1, width=1, channels=3, pixels=b"\x00\x7f\xff"))
    r.images.add(camera="wrist", encoded=imgs["rgba5x5.png"])
    r.pruning.method = pb.PRUNING_METHOD_SPECPRUNE
    r.pruning.config_json = compact(json.loads(read("models/tiny/pruning_config.json"))["pruning"])
    out["predict_specprune_config_json.pb"] = r
    r = base(proprio=[float("nan")] + [0.0] * 7, robot_id="bad robot")  # invalid: two fields
    r.images.add(camera="main", encoded=b"\x89PNG\r\n\x1a\n")
    out["predict_invalid.pb"] = r
    out["reset.pb"] = pb.ResetRequest(robot_id="arm-02:left")
    blobs = collections.OrderedDict((k, v.SerializeToString()) for k, v in out.items())
    # A string field (instruction, field 5) that is not UTF-8: the parse must fail cleanly.
    blobs["predict_not_utf8.pb"] = b"\x0a\x03abc\x2a\x02\xc3\x28"
    blobs["empty.pb"] = b""
    return blobs


# ---- torch_pickle -------------------------------------------------------------------------------

# torch.save(OrderedDict{fc1.weight: float[3,2], fc1.bias: float[3]}) by CPython 3.11, protocol 2
# (tests/checkpoint_test.cc PickleEmitterMatchesCPython).
CPYTHON_STATE_DICT = bytes.fromhex(
    "800263636f6c6c656374696f6e730a4f726465726564446963740a71002952710128580a0000006663312e77"
    "6569676874710263746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a71032828"
    "580700000073746f72616765710463746f7263680a466c6f617453746f726167650a710558010000003071"
    "06580300000063707571074b06747108514b004b034b028671094b024b0186710a8968002952710b74710c"
    "52710d58080000006663312e62696173710e6803282868046805580100000031710f68074b03747110514b"
    "004b038571114b0185711289680029527113747114527115757d711658090000005f6d6574616461746171"
    "1768002952711828580000000071197d711a580700000076657273696f6e711b4b01735803000000666331"
    "711c7d711d681b4b01737573622e")


def fake_torch():
    """Stand-ins for the torch globals, so CPython's pickle writes what torch.save writes."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    torch._utils = utils
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    storages = {}
    for name in ["FloatStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage", "LongStorage",
                 "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage"]:
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
        storages[name] = cls

    def _rebuild_tensor_v2(*a):
        raise NotImplementedError

    def _rebuild_parameter(*a):
        raise NotImplementedError

    for fn in (_rebuild_tensor_v2, _rebuild_parameter):
        fn.__module__ = "torch._utils"
        fn.__qualname__ = fn.__name__
        setattr(utils, fn.__name__, fn)
    return torch, utils, storages


class Storage:
    def __init__(self, cls, key, numel):
        self.cls, self.key, self.numel = cls, key, numel


class Tensor:
    def __init__(self, fn, storage, offset, size, stride, extra=()):
        self.fn, self.args = fn, (storage, offset, tuple(size), tuple(stride)) + tuple(extra)

    def __reduce__(self):
        return self.fn, self.args


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def torch_pickle(obj, protocol):
    b = io.BytesIO()
    TorchPickler(b, protocol=protocol).dump(obj)
    return b.getvalue()


def pickles():
    torch, utils, st = fake_torch()
    out = collections.OrderedDict()
    out["cpython_state_dict_p2.pkl"] = CPYTHON_STATE_DICT

    def v2(storage, offset, size, stride):
        return Tensor(utils._rebuild_tensor_v2, storage, offset, size, stride,
                      (False, collections.OrderedDict()))

    s0 = Storage(st["FloatStorage"], "0", 12)
    s1 = Storage(st["BFloat16Storage"], "1", 4)
    sd = collections.OrderedDict()
    sd["layer.weight"] = v2(s0, 0, [3, 4], [4, 1])
    sd["layer.weight_t"] = v2(s0, 0, [4, 3], [1, 4])  # a second view of the same storage
    sd["layer.bias"] = v2(s1, 0, [4], [1])
    sd["scalar"] = v2(Storage(st["LongStorage"], "2", 1), 0, [], [])
    sd["mask"] = v2(Storage(st["BoolStorage"], "3", 6), 2, [2, 2], [2, 1])
    sd["empty"] = v2(Storage(st["HalfStorage"], "4", 0), 0, [0, 5], [5, 1])
    out["state_dict_p2.pkl"] = torch_pickle(sd, 2)
    out["state_dict_p4.pkl"] = torch_pickle(sd, 4)  # FRAME, SHORT_BINUNICODE, STACK_GLOBAL, MEMOIZE
    out["state_dict_p5.pkl"] = torch_pickle(sd, 5)
    param = Tensor(utils._rebuild_parameter, None, None, [], [])
    param.args = (v2(Storage(st["DoubleStorage"], "p", 3), 0, [3], [1]), True,
                  collections.OrderedDict())
    out["parameter_p2.pkl"] = torch_pickle({"w": param, "n": None, "f": 1.5, "big": 2**40,
                                            "neg": -7, "t": (True, False), "l": [1, "x"]}, 2)
    return out


# ---- safetensors --------------------------------------------------------------------------------

def safetensors(tensors, metadata=None, pad=0):
    header, data = {}, b""
    for name, (dtype, shape, blob) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    if metadata is not None:
        header["__metadata__"] = metadata
    h = compact(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8 + pad)
    return struct.pack("<Q", len(h)) + h + data


def safetensor_files():
    out = collections.OrderedDict()
    out["two_tensors.safetensors"] = safetensors({
        "w": ("F32", [2, 3], struct.pack("<6f", *range(6))),
        "b": ("BF16", [3], b"\x80\x3f\x00\x40\x40\x40")}, {"format": "pt"})
    out["all_dtypes.safetensors"] = safetensors({
        "f16": ("F16", [2], b"\x00\x3c\x00\x40"), "f64": ("F64", [1], struct.pack("<d", 2.5)),
        "i64": ("I64", [1], struct.pack("<q", -3)), "i32": ("I32", [2], struct.pack("<2i", 1, 2)),
        "i16": ("I16", [1], b"\x01\x00"), "i8": ("I8", [3], b"\x01\x02\x03"),
        "u8": ("U8", [2, 1], b"\xff\x00"), "bool": ("BOOL", [2], b"\x01\x00")})
    out["scalar_and_empty.safetensors"] = safetensors({
        "scalar": ("F32", [], struct.pack("<f", 1.0)), "empty": ("F32", [0, 4], b"")})
    out["header_only.safetensors"] = safetensors({}, {"note": "no tensors"}, pad=8)
    # The first tensor of the embedded model's proprio projector (a real HF-layout header).
    real = read("models/tiny/proprio_projector--specprune.safetensors")
    (n,) = struct.unpack("<Q", real[:8])
    header = json.loads(real[8:8 + n])
    name = sorted(k for k in header if k != "__metadata__")[0]
    b, e = header[name]["data_offsets"]
    blob = real[8 + n + b:8 + n + e]
    if len(blob) <= 4096:
        out["tiny_proprio_first_tensor.safetensors"] = safetensors(
            {name: (header[name]["dtype"], header[name]["shape"], blob)},
            header.get("__metadata__"))
    return out


# ---- configs ------------------------------------------------------------------------------------

def hf_oft_config():
    src = read("tests/hf_checkpoint_test.cc").decode()
    start = src.index('json::parse(R"(') + len('json::parse(R"(')
    return json.loads(src[start:src.index(')")', start)])


# ---- dictionaries -------------------------------------------------------------------------------

# Each JSON target's dictionary: the key and enum names its parser compares against (string
# literals of its sources), as JSON strings, plus JSON syntax.
DICT_SOURCES = {
    "pruning_config": ["pruning/pruning_config.cc"],
    "server_config": ["server/server_config.cc", "server/request_log.cc"],
    "hf_config": ["model/hf_config.cc", "model/config.cc"],
    "dataset_stats": ["model/dataset_stats.cc"],
    "safetensors": ["model/safetensors.cc"],
}
JSON_TOKENS = ["{", "}", "[", "]", ":", ",", "true", "false", "null", "-1", "0", "1e9", "0.5",
               "1e-45", "1e309", "-0", "18446744073709551616", "9223372036854775807", "\\u0000"]
LITERAL_RE = r'"([A-Za-z_][A-Za-z0-9_:]{0,40})"'


def dict_line(token):
    return '"' + "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "\\x%02x" % ord(c)
                         for c in token) + '"'


def dicts():
    out = collections.OrderedDict()
    for target, sources in DICT_SOURCES.items():
        names = set()
        for src in sources:
            names.update(re.findall(LITERAL_RE, read(src).decode()))
        lines = ["# fuzz/dict/%s.dict: generated by fuzz/make_corpus.py from %s" %
                 (target, ", ".join(sources))]
        lines += [dict_line(t) for t in JSON_TOKENS]
        lines += [dict_line('"%s"' % n) for n in sorted(names)]
        out[target] = "\n".join(lines) + "\n"
    # The pickle reader: the GLOBALs it resolves, as GLOBAL opcodes and as the strings of
    # STACK_GLOBAL, and the opcodes of torch.save's pickles.
    lines = ["# fuzz/dict/torch_pickle.dict: generated by fuzz/make_corpus.py"]
    globals_ = [("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_parameter"),
                ("torch._utils", "_rebuild_parameter_with_state"),
                ("torch.jit._pickle", "restore_type_tag"), ("torch", "FloatStorage"),
                ("torch", "BFloat16Storage"), ("torch", "HalfStorage"), ("torch", "LongStorage"),
                ("torch", "BoolStorage"), ("torch", "ByteStorage")]
    for module, name in globals_:
        lines.append(dict_line("c%s\n%s\n" % (module, name)))
        lines.append(dict_line(module))
        lines.append(dict_line(name))
    lines += [dict_line(t) for t in ["storage", "cpu", "\x80\x02", "\x80\x04\x95", "\x80\x05\x95",
                                     "Q", "R", "b", ".", "\x93", "\x94", "\x8c", "\x89", "\x88"]]
    out["torch_pickle"] = "\n".join(collections.OrderedDict.fromkeys(lines)) + "\n"
    return out


def main():
    for target, text in dicts().items():
        os.makedirs(os.path.join(ROOT, "fuzz", "dict"), exist_ok=True)
        with open(os.path.join(ROOT, "fuzz", "dict", target + ".dict"), "w") as f:
            f.write(text)
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    imgs = images()
    for k, v in imgs.items():
        write("image_decode", k, v)
    # Raw frames (first two bytes height and width, then HWC pixels).
    write("image_decode", "raw2x3.bin", bytes([2, 3]) + bytes(range(18)))

    pb, tmp = load_stubs()
    try:
        for k, v in requests(pb, imgs).items():
            write("request_validation", k, v)
    finally:
        shutil.rmtree(tmp)

    tiny_pruning = json.loads(read("models/tiny/pruning_config.json"))["pruning"]
    pruning = collections.OrderedDict()
    pruning["tiny_model.json"] = tiny_pruning
    for name, path in [("negative_k_global.json", "tests/data/pruning_negative_k_global.json"),
                       ("starved.json", "tests/data/pruning_starved_specprune.json")]:
        pruning[name] = json.loads(read(path))["pruning"]
    pruning["fastv.json"] = {"method": "fastv", "fastv": {"layer": 2, "keep_ratio": 0.5,
                                                          "query": "last"}}
    pruning["random.json"] = {"method": "random", "seed": 42, "random": {"layer": 1,
                                                                        "keep_ratio": 0.3}}
    pruning["specprune_lists.json"] = {
        "method": "specprune", "specprune": {
            "local_layers": [0], "global_layers": [2, 5], "update_layers": [1, 2, 3, 4],
            "prune_layers": [2, 4], "dynamic_cameras": [0], "first_step_fallback": "local",
            "similarity_threshold": 0.95, "history_k": -1.0, "history_b": 7.0,
            "history_offset": 4, "max_history": 11, "min_tokens": 4}}
    pruning["empty.json"] = {}
    for k, v in pruning.items():
        write("pruning_config", k, compact(v))

    server = json.loads(read("deploy/k8s/common/server.json"))
    write("server_config", "k8s_server.json", read("deploy/k8s/common/server.json"))
    write("server_config", "with_pruning.json",
          compact(dict(server, pruning=tiny_pruning, request_log="json", reflection=False)))
    write("server_config", "tls_auth.json", compact({
        "tls_cert_file": "/etc/specprune/tls.crt", "tls_key_file": "/etc/specprune/tls.key",
        "tls_client_ca_file": "/etc/specprune/ca.crt", "tls_require_client_cert": True,
        "tls_refresh_seconds": 60, "auth_tokens_file": "/etc/specprune/tokens",
        "auth_model_info": False, "metrics_host": "127.0.0.1", "replica_id": "r0"}))
    write("server_config", "admission.json", compact({
        "max_inflight_per_credential": 4, "max_inflight_per_robot": 2, "credential_rate_hz": 50,
        "credential_burst": 10, "robot_rate_hz": 20, "robot_burst": 5, "max_tracked_keys": 1000,
        "max_instruction_tokens": 128, "max_image_width": 640, "max_image_height": 480,
        "max_encoded_image_bytes": 1048576, "device": "cpu", "dtype": "bf16"}))
    # File, then NUL-separated key=value flags (fuzz/server_config_fuzzer.cc).
    write("server_config", "file_and_flags.bin",
          b'{"port": 50052}\0port=50053\0max_batch_size=16\0dtype=fp32\0metrics_port=0')
    write("server_config", "empty_file_flags.bin", b"\0max_queue_delay_ms=2.5\0host=")

    write("hf_config", "tiny_config.json", read("models/tiny/config.json"))
    write("hf_config", "hf_openvla_oft.json", compact(hf_oft_config()))
    tiny = json.loads(read("models/tiny/config.json"))
    write("hf_config", "bare_specprune_object.json", compact(tiny["specprune"]))

    stats = read("models/tiny/dataset_statistics.json")
    write("dataset_stats", "tiny_dataset_statistics.json", stats)
    write("dataset_stats", "hf_norm_stats.json", compact(hf_oft_config()["norm_stats"]))
    one = json.loads(stats)
    key = sorted(one)[0]
    entry = {"action": {"q01": one[key]["action"]["q01"], "q99": one[key]["action"]["q99"]}}
    write("dataset_stats", "minimal_action_only.json", compact({"minimal": entry}))

    for k, v in pickles().items():
        write("torch_pickle", k, v)
    for k, v in safetensor_files().items():
        write("safetensors", k, v)

    total = 0
    for d, _, files in os.walk(CORPUS):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    print("fuzz/corpus: %d bytes" % total)


if __name__ == "__main__":
    main()
