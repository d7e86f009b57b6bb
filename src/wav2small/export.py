"""ONNX export, static int8 quantisation and the parity gate.

``export(model, out_dir)`` writes ``model.onnx`` (fp32; BatchNorm folded into the convolutions by
the exporter) and, with ``int8=True``, ``model.int8.onnx``: static QDQ quantisation by
onnxruntime, per-channel int8 weights, calibrated on audio. The frozen DFT convolutions and the
mel projection stay float: quantising the pre-log power spectrum to 8 bits destroys it. The
parity gate checks fp32 ONNX against torch (max abs diff ≤ 1e-4 on 1, 4 and 10 s inputs) and
int8 against fp32 (CCC ≥ 0.99 per dimension on audio not used for calibration). When only
16-bit activations pass that gate, the int8 file is ``model.int8-a16.onnx`` and the card says so.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wav2small import LABELS, SAMPLE_RATE
from wav2small.card import CARD_NAME, model_card, run_facts, write_model_card
from wav2small.config import EXPORTERS  # noqa: F401 (public here too)
from wav2small.errors import UserError
from wav2small.inputs import write_text

log = logging.getLogger(__name__)
# The dynamo exporter's passes log every rewrite at INFO; keep the CLI output readable.
for _name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
    logging.getLogger(_name).setLevel(logging.WARNING)

INPUT_NAME = "signal"
OUTPUT_NAME = "adv"
# Optional inputs and per-token outputs of a Wav2Small export (models.wav2small.StagedExport).
NORM_INPUT, POOLED_INPUT, LIN_OUTPUT, SOF_OUTPUT = "norm", "pooled", "lin", "sof"
# ... and of a trend model (Wav2SmallConfig.trend): the head's trend rows, the per-token trd map.
TREND_INPUT, TRD_OUTPUT = "trend", "trd"
OPSET = 18
PARITY_SECONDS = (1.0, 4.0, 10.0)
PARITY_MAX_ABS = 1e-4
INT8_MIN_CCC = 0.99
# Activation precision tried in turn until the fidelity gate passes: 8-bit is fastest; a model
# output that barely varies (e.g. a dimension a short run did not learn) can need 16-bit.
ACTIVATION_BITS = (8, 16)
#: The int8 file: int8 weights with 8-bit activations, or (when only that passed the fidelity
#: gate) 16-bit activations, which the file name says so that no one ships it as true 8-bit.
INT8_NAMES = {8: "model.int8.onnx", 16: "model.int8-a16.onnx"}
N_CALIBRATION = 64
N_VALIDATION = 64
#: Longest piece read from each calibration/validation file (from its start): memory stays
#: bounded whatever the files' lengths (calibration itself uses 4 s of each clip).
CALIBRATION_READ_SECONDS = 20.0


@dataclass
class ExportReport:
    """What :func:`export` wrote and measured."""

    fp32_path: str
    fp32_bytes: int
    int8_path: str | None = None
    int8_bytes: int | None = None
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per input length
    int8_ccc: dict[str, float] = field(default_factory=dict)  # per dimension
    int8_activation_bits: int | None = None
    passed: bool = True

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        lines = [f"fp32  {self.fp32_path}  {self.fp32_bytes / 1024:.1f} KB"]
        lines += [
            f"  parity vs torch, {k}: max |diff| (relative above 1) = {v:.2e}"
            for k, v in self.max_abs_diff.items()
        ]
        if self.int8_path:
            lines.append(
                f"int8  {self.int8_path}  {self.int8_bytes / 1024:.1f} KB  "
                f"(int8 weights, {self.int8_activation_bits}-bit activations)"
            )
            lines += [f"  CCC int8 vs fp32, {k}: {v:.4f}" for k, v in self.int8_ccc.items()]
        lines.append("parity gate: " + ("PASSED" if self.passed else "FAILED"))
        return "\n".join(lines)


#: Opset of the TorchScript exporter (native ONNX GRU, which the early exits need; see
#: :data:`wav2small.config.EXPORTERS`).
TORCHSCRIPT_OPSET = 17


def export_onnx(
    model,
    path: str | Path,
    *,
    metadata: dict[str, str] | None = None,
    exporter: str = "dynamo",
    output: str = OUTPUT_NAME,
    min_samples: int = 64,
) -> Path:
    """Export a waveform → outputs model to fp32 ONNX with dynamic batch and time axes.

    The one ONNX writer of the package (students, and early exits through
    :func:`wav2small.selfdistill.export_exit`): export in a temporary folder, strip exporter
    debug annotations, set ``metadata_props``, write atomically.

    Args:
        model: a torch module taking (batch, samples) float input.
        path: output file (written atomically).
        metadata: extra string facts for ``metadata_props`` (labels and sample rate are always
            set; these win).
        exporter: ``dynamo`` (opset 18) or ``torchscript`` (opset 17).
        output: name of the (first) output.
        min_samples: shortest input the dynamic time axis allows.
    """
    import onnx
    import torch

    from wav2small.models import model_info
    from wav2small.models.wav2small import StagedExport, Wav2Small

    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"exporter must be dynamo or torchscript, got {exporter!r}")
    path = Path(path)
    model = model.eval()
    signal_shape = {
        0: torch.export.Dim("batch"),
        1: torch.export.Dim("samples", min=min_samples),
    }
    staged = isinstance(model, Wav2Small)
    if staged:  # staged form: optional inputs, per-token outputs
        module = StagedExport(model)
        example = module.example_inputs()
        norm = [NORM_INPUT] if module.utterance_norm else []
        trend = [TREND_INPUT] if module.n_trend else []
        names = (
            [INPUT_NAME, *norm, POOLED_INPUT, *trend],
            [output, LIN_OUTPUT, SOF_OUTPUT, *([TRD_OUTPUT] if trend else [])],
        )
        rows = torch.export.Dim("pooled_batch")
        shapes = (
            signal_shape,
            *([{0: torch.export.Dim("norm_batch")}] if norm else []),
            {0: rows},
            *([{0: rows}] if trend else []),
        )
    else:
        g = torch.Generator().manual_seed(0)
        module = model
        example = (torch.zeros(2, SAMPLE_RATE).normal_(generator=g),)
        names, shapes = ([INPUT_NAME], [output]), (signal_shape,)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp_path = Path(tmp) / "model.onnx"
        if exporter == "dynamo":
            options = {"dynamic_shapes": shapes, "dynamo": True, "opset_version": OPSET}
        elif staged:
            raise ValueError("Wav2Small exports use the dynamo exporter")
        else:
            options = {
                "dynamo": False,
                "opset_version": TORCHSCRIPT_OPSET,
                "dynamic_axes": {INPUT_NAME: {0: "batch", 1: "samples"}, output: {0: "batch"}},
            }
        torch.onnx.export(
            module,
            example,
            str(tmp_path),
            input_names=names[0],
            output_names=names[1],
            verbose=False,
            **options,
        )
        proto = onnx.load(str(tmp_path))
    facts = {**model_info(model), **(metadata or {})}
    if staged:
        _add_input_defaults(proto, module.defaults())
        facts |= staged_facts(model)
    _set_metadata(proto, facts)
    _save_atomic(proto, path)
    return path


def parity_gate(model, fp32_path: str | Path, report: ExportReport, *, seed: int = 0) -> bool:
    """The fp32 gate: :func:`check_fp32_parity` into ``report`` (``max_abs_diff``; ``passed``
    cleared when the difference exceeds :data:`PARITY_MAX_ABS`). Returns whether it passed."""
    report.max_abs_diff = check_fp32_parity(model, fp32_path, seed=seed)
    ok = max(report.max_abs_diff.values()) <= PARITY_MAX_ABS
    report.passed = report.passed and ok
    return ok


def staged_facts(model) -> dict[str, str]:
    """Metadata a chunked/online runtime needs: token geometry and normalisation."""
    left, right = model.receptive_field()
    window, _ = model.frame_geometry()
    trend = getattr(model.cfg, "trend", 0)
    return {
        "stages": f"{INPUT_NAME},{NORM_INPUT if model.norm == 'utterance' else ''},"
        f"{POOLED_INPUT}{',' + TREND_INPUT if trend else ''}->{OUTPUT_NAME},{LIN_OUTPUT},"
        f"{SOF_OUTPUT}{',' + TRD_OUTPUT if trend else ''}",
        "token_samples": str(model.token_samples()),
        "receptive_field": f"{left},{right}",
        "min_samples": str(window),
        "norm": model.norm,
    }


def plain_graph(proto) -> None:
    """Reduce a staged export to the plain ``signal → adv`` graph, in place: the optional inputs
    become constants (their defaults) and the per-token outputs are dropped (for runtimes and
    formats that want one input and one output, e.g. audonnx)."""
    inits = {t.name for t in proto.graph.initializer}
    keep_in = [i for i in proto.graph.input if i.name not in inits]
    del proto.graph.input[:]
    proto.graph.input.extend(keep_in)
    del proto.graph.output[1:]


def _add_input_defaults(proto, defaults: dict) -> None:
    """Give graph inputs a default value (an initializer of the same name): optional inputs."""
    from onnx import numpy_helper

    # first in the list: the model's own weights keep their order (the head's last)
    new = [numpy_helper.from_array(value.numpy(), name) for name, value in defaults.items()]
    existing = list(proto.graph.initializer)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(new + existing)


def _strip(proto) -> None:
    """Drop exporter debug annotations (stack traces, node metadata): ~20 % of a small file."""
    del proto.graph.value_info[:]
    for item in [
        *proto.graph.node,
        *proto.graph.initializer,
        *proto.graph.input,
        *proto.graph.output,
    ]:
        del item.metadata_props[:]
        item.doc_string = ""


def _set_metadata(proto, facts: dict[str, str]) -> None:
    _strip(proto)
    del proto.metadata_props[:]
    for key, value in sorted(facts.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)


def _save_atomic(proto, path: Path) -> None:
    import onnx

    from wav2small.inputs import atomic_write

    with atomic_write(path) as tmp:
        onnx.save(proto, str(tmp))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (labels, preset, sample_rate, …)."""
    from wav2small.backends import onnx_metadata

    return onnx_metadata(path)


def _front_end_nodes(proto) -> list[str]:
    """Names of the float front-end nodes: DFT convolutions and the mel projection."""
    from onnx import numpy_helper

    shapes = {t.name: numpy_helper.to_array(t).shape for t in proto.graph.initializer}

    def dft(node) -> bool:  # Conv1d(1, 33, 64): weight of rank 3
        return node.op_type == "Conv" and len(shapes.get(node.input[1], ())) == 3

    def mel(node) -> bool:  # MatMul with the (33, 26) mel matrix
        return node.op_type == "MatMul" and any(
            len(shapes.get(i, ())) == 2 and shapes[i][0] == 33 for i in node.input
        )

    return [n.name for n in proto.graph.node if dft(n) or mel(n)]


class _Reader:
    """Feeds calibration clips one at a time to onnxruntime's calibrator."""

    def __init__(self, clips: list[np.ndarray]) -> None:
        self._it = iter(clips)

    def get_next(self) -> dict[str, np.ndarray] | None:
        clip = next(self._it, None)
        return None if clip is None else {INPUT_NAME: clip[None, :].astype(np.float32)}


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    *,
    calibration: list[np.ndarray],
    activation_bits: int = 8,
) -> Path:
    """Static QDQ int8 quantisation calibrated on ``calibration`` clips.

    Measured on wav2small-paper (docs/ARCHITECTURE.md): quantising the output Gemm's *input*
    costs the most fidelity (its [pooled ; Gram] features span very different ranges, and one
    int8 scale cannot hold both: CCC int8 vs fp32 fell to 0.90), so the convolutions are static
    QDQ (per-channel weights, MinMax activations) and the Gemm gets int8 *weights only*. The DFT
    and mel front end stays float. Tensor names are shortened (≈ 10 KB of a 100 KB file).
    ``activation_bits=16`` keeps int8 weights (same file size) but quantises activations to 16
    bits (opset 21 QDQ): slower on CPU, but faithful where an output barely varies.

    8-bit activations are uint8 and conv weights uint8 per channel (asymmetric; "U8U8"). ONNX
    Runtime's fused x86 integer kernels (QLinearConv, chosen at its default optimisation level,
    which ``predict`` uses) sum pairs of uint8 × int8 products in int16 on CPUs without VNNI,
    and full-range int8 weights overflow it; its uint8 × uint8 kernels widen first and cannot.
    Measured on this AVX2 machine (int8 vs fp32 CCC, A/D/V, default level / BASIC level, the
    latter being the reference kernels onnxruntime-web also runs): wav2small-paper untrained with
    the head scaled ×50, int8 weights 0.75/0.65/0.66 vs 0.999/0.999/0.996; 7-bit int8 weights
    (``reduce_range``) 0.999/0.982/0.993 at both; uint8 weights 0.997/0.997/0.997 at both. The
    briefly trained wav2small-tiny of the tests: int8 weights 0.976/0.996/0.991 vs
    0.987/0.993/0.999; uint8 0.997/1.000/0.989 at both.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    int8_path = Path(int8_path)
    facts = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    staged = "stages" in facts  # a Wav2Small-family export (see StagedExport)
    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        proto = onnx.load(str(pre))
        # a MobileNet's head convolution runs once per clip on the pooled vector: float
        head = [] if staged else _pooled_convs(proto)
        thin = _thin_convs(proto) if staged else _thin_convs(proto, grouped=False)
        float_nodes = _front_end_nodes(proto) + thin + head
        quantize_static(
            str(pre),
            str(out),
            _Reader(_fixed_length(calibration)),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=WAV2SMALL_INT8_OPS if staged else ["Conv"],
            per_channel=True,
            activation_type=QuantType.QInt16 if activation_bits == 16 else QuantType.QUInt8,
            # U8U8 (see above); 16-bit activations run on reference kernels, int8 weights
            weight_type=QuantType.QInt8 if activation_bits == 16 else QuantType.QUInt8,
            nodes_to_exclude=float_nodes,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "WeightSymmetric": activation_bits == 16,
                "UseQDQContribOps": activation_bits == 16,
            },
        )
        q = onnx.load(str(out))
    _quantize_gemm_weights(q)
    _quantize_conv_weights(q, head)
    if json.loads(facts.get("config") or "{}").get("frontend") == "pitch":
        _quantize_frontend_weights(q)  # the released 4 ms DFT (17 KB) stays float
    _shorten_names(q)
    _set_metadata(
        q,
        facts
        | {
            "quantization": "8-bit weights (conv "
            + ("int8" if activation_bits == 16 else "uint8")
            + f", Gemm int8); static QDQ (Conv) with {activation_bits}-bit activations"
        },
    )
    _save_atomic(q, int8_path)
    return int8_path


#: Ops quantised in a Wav2Small graph: with Relu and MaxPool inside the QDQ region, ONNX Runtime
#: fuses Conv+Relu into one QLinearConv and max-pools in uint8 (NhwcMaxPool), so activations stay
#: 8-bit from one convolution to the next instead of a float round trip (DQ → Relu → Q) per layer.
WAV2SMALL_INT8_OPS = ["Conv", "Relu", "MaxPool"]
#: Convolutions with fewer input channels than this stay float (see :func:`_thin_convs`).
MIN_INT8_CONV_CHANNELS = 4


def _thin_convs(proto, *, grouped: bool = True) -> list[str]:
    """Convolutions with < MIN_INT8_CONV_CHANNELS input channels (e.g. on the 1-channel image);
    with ``grouped=False`` only ungrouped ones (a MobileNet's stem, not its depthwise layers).

    Measured (ORT profile, 5 s, wav2small-paper): the 1 → 13 conv on the log-mel image took ≈ 4×
    longer as QLinearConv than as a float NCHWc conv (a 9-long reduction cannot fill the int8
    GEMM kernels and the re-quantisation of 13 outputs per pixel dominates), and quantising the
    dB image (a wide range in one 8-bit scale) was the largest int8 error on ``lin``.
    """
    from onnx import numpy_helper

    shapes = {t.name: numpy_helper.to_array(t).shape for t in proto.graph.initializer}
    return [
        n.name
        for n in proto.graph.node
        if n.op_type == "Conv"
        and len(shapes.get(n.input[1], ())) == 4
        and shapes[n.input[1]][1] < MIN_INT8_CONV_CHANNELS
        and (grouped or all(a.i == 1 for a in n.attribute if a.name == "group"))
    ]


def _pooled_convs(proto) -> list[str]:
    """Convolutions that read a global mean (``ReduceMean``/``GlobalAveragePool``): a timm
    MobileNet's 1×1 ``conv_head`` on the pooled vector (and MobileNetV3's squeeze-excite
    ``conv_reduce``, which also reads a mean: one vector per image).

    Measured (MobileNetV4-S distilled 300 steps, 16 held-out pool clips): with this convolution's
    input quantised to 8 bits, int8 vs fp32 CCC was 0.972 / 0.978 / 0.900 (gate 0.99); it costs
    one matrix-vector product per clip, so it stays float with int8 weights (as the Gemm).
    """
    pooled = {
        o
        for n in proto.graph.node
        if n.op_type in ("ReduceMean", "GlobalAveragePool")
        for o in n.output
    }
    return [n.name for n in proto.graph.node if n.op_type == "Conv" and n.input[0] in pooled]


def _quantize_conv_weights(proto, nodes: list[str]) -> None:
    """int8 weights (per output channel) + DequantizeLinear for float convolutions ``nodes``."""
    inits = {t.name: t for t in proto.graph.initializer}
    names = {n.input[1] for n in proto.graph.node if n.name in nodes and n.input[1] in inits}
    for name in sorted(names):  # collected first: _store_int8 inserts nodes
        _store_int8(proto, inits[name], axis=0)


def _fixed_length(clips: list[np.ndarray], seconds: float = 4.0) -> list[np.ndarray]:
    """Crop or tile clips to one length: equal-length calibration gives tighter ranges."""
    n = int(seconds * SAMPLE_RATE)
    return [np.resize(c, n) if len(c) < n else c[:n] for c in clips]


def _quantize_gemm_weights(proto) -> None:
    """Replace each Gemm weight by int8 values + per-output-row scales + DequantizeLinear."""
    inits = {t.name: t for t in proto.graph.initializer}
    for node in [n for n in proto.graph.node if n.op_type == "Gemm"]:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        _store_int8(proto, inits[node.input[1]], axis=0 if trans_b else 1)  # the output axis


def _quantize_frontend_weights(proto) -> None:
    """Store the frozen front-end convolution weights (rank 3: DFT rows, FIR, box filters) as
    int8 rows + per-row scales + DequantizeLinear; the convolutions still run in float.

    The pitch front end's long-window DFT rows are ≈ 11K floats (45 KB), more than the int8
    budget leaves; 8-bit rows (step 1/127 of a row's peak) put the DFT's leakage floor ≈ 68 dB
    below a white input's level, far under the 8-bit quantisation of the dB image that follows.
    """
    inits = {t.name: t for t in proto.graph.initializer}
    names = {
        n.input[1]
        for n in proto.graph.node
        if n.op_type == "Conv"
        and n.input[1] in inits
        and len(inits[n.input[1]].dims) == 3
        and inits[n.input[1]].data_type == 1  # float
    }
    for name in sorted(names):
        _store_int8(proto, inits[name], axis=0)


def _store_int8(proto, init, *, axis: int) -> None:
    """Replace a float initializer by symmetric int8 values with one scale per index of ``axis``
    (scale = row peak / 127) and a DequantizeLinear node that restores the float tensor."""
    from onnx import helper, numpy_helper

    name, w = init.name, numpy_helper.to_array(init)
    rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    scale = (np.abs(rows).max(axis=1) / 127.0).astype(np.float32) + np.float32(1e-12)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    proto.graph.initializer.remove(init)
    proto.graph.initializer.extend(
        [
            numpy_helper.from_array(q, name + "_q"),
            numpy_helper.from_array(scale, name + "_s"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), name + "_z"),
        ]
    )
    proto.graph.node.insert(
        0,
        helper.make_node(
            "DequantizeLinear",
            [name + "_q", name + "_s", name + "_z"],
            [name],
            axis=axis,
            name=name + "_dq",
        ),
    )


def _shorten_names(proto) -> None:
    """Rename every internal tensor and node to a short id (graph inputs/outputs kept)."""
    keep = {i.name for i in proto.graph.input} | {o.name for o in proto.graph.output} | {""}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        return names.setdefault(name, format(len(names), "x"))

    for t in proto.graph.initializer:
        t.name = short(t.name)
    for i, node in enumerate(proto.graph.node):
        # unnamed nodes (quant_pre_process leaves some, e.g. in MobileNetV3) get unique names
        node.name = short("node/" + (node.name or f"#{i}"))
        node.input[:] = [short(i) for i in node.input]
        node.output[:] = [short(o) for o in node.output]


def run_onnx(path_or_session, clips: list[np.ndarray]) -> np.ndarray:
    """Run an ONNX model clip by clip → (n_clips, 3) (raw output order)."""
    from wav2small.backends import onnx_session

    sess = path_or_session
    if isinstance(sess, str | os.PathLike):
        sess = onnx_session(sess, threads=1)
    return np.stack(
        [sess.run(None, {INPUT_NAME: c[None, :].astype(np.float32)})[0][0] for c in clips]
    )


def check_fp32_parity(model, fp32_path: str | Path, *, seed: int = 0) -> dict[str, float]:
    """Max |torch − ONNX| / max(1, |torch|) on 1, 4 and 10 s speech-like inputs (batch of 2).

    For outputs in the usual [0, 1] range this is the absolute difference; untrained MobileNets
    output values near 1e3, where float32 rounding alone exceeds 1e-4 absolute.
    """
    import torch

    from wav2small.backends import onnx_session
    from wav2small.signals import pseudo_speech

    rng = np.random.default_rng(seed + 1000)
    sess = onnx_session(fp32_path)
    diffs = {}
    for seconds in PARITY_SECONDS:
        x = np.stack([pseudo_speech(seconds, rng=rng) for _ in range(2)])
        with torch.no_grad():
            ref = model.eval()(torch.from_numpy(x)).numpy()
        got = sess.run(None, {INPUT_NAME: x})[0]
        diffs[f"{seconds:g} s"] = float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))
    return diffs


#: ONNX Runtime optimisation levels an int8 model is checked at: the default (ALL: fused integer
#: kernels), which every session of the package uses (``predict``, ``evaluate``, the
#: benchmarks), and BASIC, whose quantise/dequantise-around-float semantics are what
#: onnxruntime-web computes in the browser page. The fidelity gate takes the worse of the two.
INT8_CHECK_LEVELS = ("default", "basic")


def _int8_session(path: str | Path, level: str):
    """A session on ``path`` at one of :data:`INT8_CHECK_LEVELS`."""
    import onnxruntime as ort

    from wav2small.backends import onnx_session, session_options

    opts = session_options(threads=1)
    if level == "basic":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    elif level != "default":
        raise ValueError(f"unknown optimisation level {level!r}; one of {INT8_CHECK_LEVELS}")
    return onnx_session(path, options=opts)


def check_int8_fidelity(
    fp32_path: str | Path, int8_path: str | Path, clips: list[np.ndarray]
) -> dict[str, float]:
    """CCC per dimension between int8 and fp32 outputs on ``clips``: the lower of the int8
    model run at ONNX Runtime's default optimisation level (what ``predict`` runs) and at BASIC
    (what the browser runs), see :data:`INT8_CHECK_LEVELS`. The fp32 reference runs at the
    default level."""
    from wav2small.metrics import ccc

    ref = run_onnx(fp32_path, clips)
    worst = np.full(len(LABELS), np.inf)
    for level in INT8_CHECK_LEVELS:
        values = ccc(run_onnx(_int8_session(int8_path, level), clips), ref)
        log.debug("int8 vs fp32 CCC at the %s level: %s", level, values)
        worst = np.minimum(worst, values)
    return {label: float(v) for label, v in zip(LABELS, worst, strict=True)}


def export(
    model,
    out_dir: str | Path,
    *,
    int8: bool = False,
    calibration: list[np.ndarray] | None = None,
    validation: list[np.ndarray] | None = None,
    seed: int = 0,
    metadata: dict[str, str] | None = None,
    gate_int8: bool = True,
    card: dict | None = None,
) -> ExportReport:
    """Export ``model`` to ``out_dir``/model.onnx (and model.int8.onnx), run the parity gate.

    Args:
        model: torch model (waveform → A/D/V).
        out_dir: output folder (created).
        int8: also write the static-int8 model.
        calibration: clips (16 kHz float) for int8 calibration; default procedural speech.
        validation: clips for the int8 fidelity check, disjoint from ``calibration``; default:
            every 4th ``calibration`` clip (held out), or procedural speech from another seed.
        seed: seed of the default clips.
        metadata: extra ONNX metadata.
        gate_int8: whether the int8 CCC counts towards ``passed``. Untrained weights give nearly
            constant outputs (std ≈ 0.002), so their int8-vs-fp32 CCC is reported, not gated.
        card: facts for the model card (keyword arguments of :func:`wav2small.card.model_card`:
            ``facts``, ``metrics``, ``data``, ``untrained``); a card is always written.

    Returns:
        The report; ``report.passed`` is False when a gate failed (a model that failed its gate
        is renamed ``<name>.rejected``, never left under its final name).
    """
    import onnxruntime as ort

    from wav2small.signals import pseudo_speech_set

    # the parity and calibration sessions would each warn about the optional inputs
    ort.set_default_logger_severity(3)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(model, out_dir / "model.onnx", metadata=metadata)
    report = ExportReport(str(fp32), fp32.stat().st_size)
    parity_ok = parity_gate(model, fp32, report, seed=seed)
    int8_ok = True
    if int8:
        if calibration and not validation:  # hold out every 4th clip for the fidelity check
            calibration, validation = _hold_out(calibration)
        calibration = calibration or pseudo_speech_set(N_CALIBRATION, seed=seed)
        validation = validation or pseudo_speech_set(N_VALIDATION, seed=seed + 1)
        for name in INT8_NAMES.values():  # no stale file of an earlier export survives
            (out_dir / name).unlink(missing_ok=True)
        for bits in ACTIVATION_BITS:
            q = quantize_int8(
                fp32, out_dir / INT8_NAMES[bits], calibration=calibration, activation_bits=bits
            )
            report.int8_ccc = check_int8_fidelity(fp32, q, validation)
            if not gate_int8 or min(report.int8_ccc.values()) >= INT8_MIN_CCC:
                break
            last = bits == ACTIVATION_BITS[-1]
            log.warning(
                "%d-bit activations: int8 vs fp32 CCC %s < %.2f%s",
                bits,
                _fmt(report.int8_ccc),
                INT8_MIN_CCC,
                "" if last else f"; retrying with 16-bit activations ({INT8_NAMES[16]})",
            )
            if last:  # the last attempt stays, rejected below
                break
            q.unlink()
        report.int8_path, report.int8_bytes = str(q), q.stat().st_size
        report.int8_activation_bits = bits
        if gate_int8:
            int8_ok = min(report.int8_ccc.values()) >= INT8_MIN_CCC
            report.passed &= int8_ok
    reject_failed(report, parity_ok=parity_ok, int8_ok=int8_ok)
    from wav2small.audonnx_export import write_audonnx_folders

    write_audonnx_folders(out_dir)  # audonnx/ (+ audonnx-int8/): audonnx.load(folder) as is
    write_text(out_dir / "export_report.json", json.dumps(asdict(report), indent=2))
    write_card_files(model, out_dir, report=report, metadata=metadata, card=card)
    return report


def write_card_files(
    model,
    out_dir: str | Path,
    *,
    report: ExportReport,
    metadata: dict[str, str] | None = None,
    card: dict | None = None,
) -> str:
    """Write (or rewrite) an export folder's model card and hub files (README.md, config.json,
    model.safetensors) for ``model`` and its export ``report``.

    :func:`export` calls it; call it again with the exported file's scores in ``card["metrics"]``
    once they are measured (``make demo`` scores the shipped ONNX file after the export).

    Args:
        model: the exported torch model.
        out_dir: the export folder.
        report: what :func:`export` wrote and measured.
        metadata: the extra ONNX metadata given to :func:`export`.
        card: keyword arguments of :func:`wav2small.card.model_card` (``facts``, ``metrics``,
            ``data``, ``untrained``).

    Returns:
        The card's text.
    """
    from wav2small.hub import write_hub_files
    from wav2small.models import model_info

    info = {**model_info(model), **(metadata or {})}
    text = model_card(info=info, report=report, **(card or {}))
    write_model_card(out_dir, text)
    untrained = bool((card or {}).get("untrained"))
    write_hub_files(model, out_dir, info=info, report=report, card=text, untrained=untrained)
    return text


def reject_failed(report: ExportReport, *, parity_ok: bool, int8_ok: bool = True) -> None:
    """Move models that failed a gate to ``<name>.rejected`` so none stays under its final name.

    A failed fp32 parity gate rejects the fp32 model and the int8 model built from it; a failed
    int8 fidelity gate rejects the int8 model only. The report points at the rejected files.
    """
    rejected = [] if parity_ok else ["fp32"]
    rejected += [] if parity_ok and int8_ok else ["int8"]
    for kind in rejected:
        path = getattr(report, f"{kind}_path")
        if path and Path(path).is_file():
            target = Path(path).with_name(Path(path).name + ".rejected")
            os.replace(path, target)
            setattr(report, f"{kind}_path", str(target))
            log.error("%s: failed its gate; moved to %s", path, target)


def _hold_out(clips: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split clips into calibration (3 of 4) and held-out validation (every 4th)."""
    return (
        [c for i, c in enumerate(clips) if i % 4 != 3],
        [c for i, c in enumerate(clips) if i % 4 == 3],
    )


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in values.items())


def load_calibration_clips(paths: list[str]) -> list[np.ndarray]:
    """Calibration/validation clips for int8 export: the first
    :data:`CALIBRATION_READ_SECONDS` of each file (folders expanded), bounded memory.

    Raises:
        AudioError: an unreadable file, or one too short for a model (as in ``predict``;
            named).
    """
    from wav2small.audio import read_audio
    from wav2small.infer import MIN_SAMPLES, _too_short
    from wav2small.inputs import expand_paths

    clips = []
    for f in expand_paths(paths):
        clips.append(read_audio(f, duration=CALIBRATION_READ_SECONDS))
        if len(clips[-1]) < MIN_SAMPLES:
            raise _too_short(f, len(clips[-1]))
    return clips


def export_cli(args) -> int:
    """``wav2small export MODEL --out DIR [--int8] [--calibration FILES...] [--exit K]``.

    An early-exit model (``wav2small selfdistill``'s weights, or any model with ``--exit``) goes
    to :func:`wav2small.selfdistill.selfdistill_export_cli`: the same writer and gate, one exit.
    """
    from wav2small.models import create_model, list_models, load_model
    from wav2small.selfdistill import is_early_exit_checkpoint, selfdistill_export_cli

    if getattr(args, "exit", None) is not None or is_early_exit_checkpoint(args.model):
        return selfdistill_export_cli(args)
    if getattr(args, "test", None):
        raise UserError(
            f"{args.model}: --test is for early-exit models; score a student with "
            "`wav2small evaluate`"
        )
    if getattr(args, "backbone", False):
        raise UserError(
            f"{args.model}: --backbone is for early-exit models (wav2small selfdistill)"
        )

    untrained = args.model in list_models()
    if untrained:
        log.warning(
            "exporting UNTRAINED weights of preset %s (random init, seed %d); the int8 "
            "fidelity CCC is reported but not gated",
            args.model,
            args.seed,
        )
        import torch

        torch.manual_seed(args.seed)
        model = create_model(args.model)
    else:
        model = load_model(args.model)
    card = {"untrained": True} if untrained else {"facts": run_facts(args.model)}
    calibration = load_calibration_clips(args.calibration) if args.calibration else None
    report = export(
        model,
        args.out,
        int8=args.int8,
        calibration=calibration,
        seed=args.seed,
        gate_int8=not untrained,
        card=card,
    )
    print(report.summary())
    print(f"model card: {Path(args.out) / CARD_NAME}")
    print(f"audonnx folders: {', '.join(sorted(str(p) for p in Path(args.out).glob('audonnx*')))}")
    if not report.passed and args.int8 and not args.calibration:
        print(
            "hint: int8 was calibrated on built-in signals; pass --calibration with a few dozen "
            "clips of the audio the model will see"
        )
    return 0 if report.passed else 1
