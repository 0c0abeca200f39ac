"""onnxruntime sessions for export folders (no torch): execution providers chosen by what actually loads
(CUDA, else CPU), thread counts, session options, and opening a graph of a folder once its external
data is known to stay inside the folder."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from densreg.registry.errors import RuntimeLoadError

from .protoscan import check_external_data

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
PROVIDER_CHOICES = ("auto", "cuda", "cpu")
# Intra-op threads when neither ``threads`` nor OMP_NUM_THREADS says: measured on 2 shared cores,
# sampling (D small calls) is fastest on one thread; whole-image scoring gains from a second one.
DEFAULT_SAMPLING_THREADS, DEFAULT_SCORING_THREADS = 1, 2


def resolve_threads(threads: int | None, default: int) -> int:
    """``threads`` if given, else $OMP_NUM_THREADS if a positive integer, else ``default`` (capped at the cores)."""
    if threads is not None:
        if int(threads) < 1:
            raise RuntimeLoadError(f"threads must be at least 1, got {threads}")
        return int(threads)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(default, os.cpu_count() or 1))


def session_options(threads: int | None = None, default: int = DEFAULT_SAMPLING_THREADS) -> ort.SessionOptions:
    """Full graph optimisation, intra-op threads from ``resolve_threads``, quiet logs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = resolve_threads(threads, default)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: a CUDA provider that fails to load is handled here
    return options


def open_session(path: Path, providers: list[str], options: ort.SessionOptions,
                  external: set[str]) -> ort.InferenceSession:
    """A session on ``path`` once its external data is known to be among the folder's ``external`` files."""
    if not path.is_file():
        raise RuntimeLoadError(f"{path.parent} is not a complete densreg export: {path.name} is missing")
    check_external_data(path, external)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeLoadError(f"{path} is not a loadable ONNX model (truncated or corrupt?): {first}") from exc


def check_inputs(session: ort.InferenceSession, path: Path, accepted: set[str]) -> None:
    """RuntimeLoadError when the graph ``path`` needs an input that is not among ``accepted`` (the names
    its role in the folder is fed with): a graph saved under another graph's name."""
    needed = sorted(i.name for i in session.get_inputs())
    if not set(needed) <= accepted:
        raise RuntimeLoadError(f"{path} takes the inputs {', '.join(needed)}, but the {path.stem} graph of an "
                               f"export takes {', '.join(sorted(accepted))}; is another graph saved as {path.name}? "
                               "(export the checkpoint again)")


def runtime_info() -> dict:
    """onnxruntime version, device, the providers it lists and those that actually load."""
    usable = usable_providers()
    return {"onnxruntime": ort.__version__, "device": ort.get_device(),
            "available_providers": ort.get_available_providers(), "usable_providers": usable,
            "default_provider": usable[0] if usable else None}


_USABLE: list[str] | None = None


def usable_providers() -> list[str]:
    """Providers (of CUDA and CPU) that can really create a session here, CUDA first; cached."""
    global _USABLE
    if _USABLE is None:
        probe = _probe_model()
        usable = []
        ort.set_default_logger_severity(4)  # a provider that fails to load logs an error: expected here
        for provider in (CUDA, CPU):
            if provider not in ort.get_available_providers():
                continue
            try:
                options = session_options(1)
                options.log_severity_level = 4
                session = ort.InferenceSession(probe, sess_options=options, providers=[provider])
                if session.get_providers()[0] == provider:
                    usable.append(provider)
            except Exception:  # noqa: BLE001 - a provider that fails to load is simply not usable
                continue
        ort.set_default_logger_severity(2)  # onnxruntime's default
        _USABLE = usable
    return list(_USABLE)


def _probe_model() -> bytes:
    """A serialized one-node ONNX model (Identity on a float vector), built without the onnx package."""
    def varint(n):
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def field_bytes(number, payload):
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    def field_int(number, value):
        return varint(number << 3) + varint(value)

    tensor_type = field_int(1, 1) + field_bytes(2, field_bytes(1, field_bytes(2, b"n")))  # float, shape [n]
    value_info = lambda name: field_bytes(1, name) + field_bytes(2, field_bytes(1, tensor_type))  # noqa: E731
    node = field_bytes(1, b"x") + field_bytes(2, b"y") + field_bytes(4, b"Identity")
    graph = field_bytes(1, node) + field_bytes(2, b"probe") + field_bytes(11, value_info(b"x")) \
        + field_bytes(12, value_info(b"y"))
    opset = field_bytes(1, b"") + field_int(2, 18)
    return field_int(1, 8) + field_bytes(7, graph) + field_bytes(8, opset)  # ir_version 8


def resolve_providers(provider: str) -> list[str]:
    """'auto' (CUDA if it loads, else CPU), 'cuda' (must load) or 'cpu' -> providers list."""
    if provider not in PROVIDER_CHOICES:
        raise RuntimeLoadError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDER_CHOICES)}")
    usable = usable_providers()
    if provider == "cpu" or (provider == "auto" and CUDA not in usable):
        return [CPU]
    if CUDA not in usable:
        raise RuntimeLoadError(f"the CUDA provider does not load here (onnxruntime {ort.__version__}, usable "
                               f"providers: {', '.join(usable) or 'none'}); use provider 'cpu' or 'auto'")
    return [CUDA, CPU]
