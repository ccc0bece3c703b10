"""Open Inference Protocol tensors: JSON, the binary tensor extension, and validation.

Used by both the REST and the gRPC front ends. Decoding never trusts the client: every size
is checked against the declared shape and datatype and against the configured maximum request
size before anything is allocated, and every problem raises InvalidRequest/PayloadTooLarge
with a message naming the tensor and what was expected.

Binary tensor extension (what tritonclient.http sends by default): the body is a JSON header
of `Inference-Header-Content-Length` bytes followed by the raw little-endian tensors in input
order; an input with `parameters.binary_data_size` takes its data from there. BYTES tensors
are a sequence of (4-byte little-endian length, bytes) elements.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from statmux.runtime.engine import NUMPY_TO_OIP, OIP_TO_NUMPY, ModelInfo
from statmux.runtime.serving_errors import EngineFailed, InvalidRequest, PayloadTooLarge

BYTES = "BYTES"
MAX_DIMS = 16
# No tensor a server could hold has more elements than this; checked before any size
# arithmetic, so absurd shapes ([2**32, 2**32], [0, 2**62]) are plain 400s.
MAX_ELEMENTS = 2**40
# The sequence length the Plan's latency profiles are taken at: a request longer than this
# costs proportionally more batch units at admission (see request_units).
PROFILE_SEQUENCE_LENGTH = 128
_OBJECT = np.dtype(object)
_LEN = struct.Struct("<I")
ALLOWED_DATATYPES = ", ".join([*OIP_TO_NUMPY, BYTES])


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """One decoded inference request, before it is checked against a model."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: every output of the model
    binary_outputs: bool = False  # the default for outputs that do not say
    parameters: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- datatypes
def numpy_dtype(datatype: object, tensor: str) -> np.dtype:
    if datatype == BYTES:
        return _OBJECT
    dtype = OIP_TO_NUMPY.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidRequest(
            f"tensor '{tensor}': unsupported datatype {datatype!r} (allowed: {ALLOWED_DATATYPES})"
        )
    return dtype


def oip_datatype(array: np.ndarray, tensor: str) -> str:
    if array.dtype == _OBJECT or array.dtype.kind in "SU":
        return BYTES
    name = NUMPY_TO_OIP.get(array.dtype)
    if name is None:
        raise EngineFailed(f"output '{tensor}' has dtype {array.dtype} with no OIP datatype")
    return name


def parse_shape(shape: object, tensor: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise InvalidRequest(
            f"tensor '{tensor}': shape must be a list of at most {MAX_DIMS} non-negative "
            f"integers, got {shape!r}"
        )
    for d in shape:
        if type(d) is not int or d < 0:
            raise InvalidRequest(
                f"tensor '{tensor}': shape must be a list of non-negative integers, got {shape!r}"
            )
        if d > MAX_ELEMENTS:
            raise InvalidRequest(
                f"tensor '{tensor}': shape {shape!r} has a dimension above {MAX_ELEMENTS}"
            )
    # zero dimensions do not excuse the others: numpy refuses [0, 2**32, 2**32] as well
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise InvalidRequest(
            f"tensor '{tensor}': shape {shape!r} has more than {MAX_ELEMENTS} elements"
        )
    return tuple(shape)


def _check_size(tensor: str, nbytes: int, max_bytes: int) -> None:
    if nbytes > max_bytes:
        raise PayloadTooLarge(
            f"tensor '{tensor}' has {nbytes} bytes, more than the maximum request size "
            f"{max_bytes} bytes"
        )


# --------------------------------------------------------------------------- raw tensors
def tensor_from_raw(
    name: str, datatype: object, shape: tuple[int, ...], raw: bytes | memoryview, max_bytes: int
) -> np.ndarray:
    """A tensor from its raw little-endian bytes (binary extension, gRPC raw contents)."""
    dtype = numpy_dtype(datatype, name)
    count = math.prod(shape)
    if dtype is _OBJECT:
        _check_size(name, len(raw), max_bytes)
        return deserialize_bytes(raw, count, name).reshape(shape)
    expected = count * dtype.itemsize
    _check_size(name, expected, max_bytes)
    if len(raw) != expected:
        raise InvalidRequest(
            f"tensor '{name}': {len(raw)} data bytes, but shape {list(shape)} of {datatype} "
            f"needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def serialize_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.ravel():
        b = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes(raw: bytes | memoryview, count: int, name: str) -> np.ndarray:
    if count * _LEN.size > len(raw):  # before allocating `count` slots: each needs 4 bytes
        raise InvalidRequest(
            f"tensor '{name}': {count} BYTES elements need at least {count * _LEN.size} "
            f"bytes, the data has {len(raw)}"
        )
    out = np.empty(count, dtype=_OBJECT)
    view = memoryview(raw)
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise InvalidRequest(f"tensor '{name}': BYTES data ends after {i} of {count} elements")
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + n > len(view):
            raise InvalidRequest(
                f"tensor '{name}': BYTES element {i} claims {n} bytes, only {len(view) - pos} left"
            )
        out[i] = bytes(view[pos : pos + n])
        pos += n
    if pos != len(view):
        raise InvalidRequest(
            f"tensor '{name}': {len(view) - pos} bytes left over after {count} BYTES elements"
        )
    return out


def raw_bytes(array: np.ndarray, name: str) -> bytes:
    if oip_datatype(array, name) == BYTES:
        return serialize_bytes(array)
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


# --------------------------------------------------------------------------- JSON tensors
_INT_KINDS = "biu"


def tensor_from_json(
    name: str, datatype: object, shape: tuple[int, ...], data: object, max_bytes: int
) -> np.ndarray:
    dtype = numpy_dtype(datatype, name)
    count = math.prod(shape)
    _check_size(name, count * (dtype.itemsize if dtype is not _OBJECT else 1), max_bytes)
    if not isinstance(data, list):
        raise InvalidRequest(f"tensor '{name}': 'data' must be a list, got {type(data).__name__}")
    if dtype is _OBJECT:
        flat = _flatten(data, name)
        if not all(isinstance(x, str) for x in flat):
            raise InvalidRequest(f"tensor '{name}': BYTES data must be a list of strings")
        arr = np.empty(len(flat), dtype=_OBJECT)
        arr[:] = [x.encode() for x in flat]
    else:
        try:
            parsed = np.asarray(data)
        except (ValueError, TypeError, RecursionError, OverflowError) as e:
            raise InvalidRequest(f"tensor '{name}': data is not a regular array: {e}") from None
        _check_json_kind(name, datatype, dtype, parsed)
        arr = parsed.astype(dtype, copy=False)
    if arr.size != count:
        raise InvalidRequest(
            f"tensor '{name}': {arr.size} data elements, but shape {list(shape)} needs {count}"
        )
    return arr.reshape(shape)


def _flatten(data: list[Any], name: str) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
        if len(stack) > MAX_DIMS + 1:
            raise InvalidRequest(f"tensor '{name}': data nested deeper than {MAX_DIMS}")
    return out


def _check_json_kind(name: str, datatype: object, dtype: np.dtype, parsed: np.ndarray) -> None:
    """Refuse lossy conversions (1.5 into INT64, "x" into FP32, 300 into INT8)."""
    kind = parsed.dtype.kind
    if parsed.size == 0:
        return
    ok = (
        (dtype.kind == "b" and kind == "b")
        or (dtype.kind in "iu" and kind in _INT_KINDS)
        or (dtype.kind == "f" and kind in _INT_KINDS + "f")
    )
    if not ok:
        raise InvalidRequest(
            f"tensor '{name}': data of kind {parsed.dtype} cannot be {datatype} without loss"
        )
    if dtype.kind in "iu" and kind in "iu":
        info = np.iinfo(dtype)
        if int(parsed.min()) < info.min or int(parsed.max()) > info.max:
            raise InvalidRequest(f"tensor '{name}': data out of range for {datatype}")


def tensor_to_json(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = oip_datatype(array, name)
    if datatype == BYTES:
        data: list[Any] = [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.ravel()
        ]
    else:
        data = array.ravel().tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


# --------------------------------------------------------------------------- REST bodies
def decode_rest_request(body: bytes, header_length: int | None, max_bytes: int) -> InferRequest:
    """Decode a POST .../infer body (plain JSON or the binary tensor extension)."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(
            f"request body has {len(body)} bytes, more than the maximum {max_bytes} bytes"
        )
    if header_length is None:
        header_length = len(body)
    elif header_length < 0 or header_length > len(body):
        raise InvalidRequest(
            f"Inference-Header-Content-Length {header_length} is outside the body "
            f"(0..{len(body)} bytes)"
        )
    blobs = memoryview(body)[header_length:]
    key = None
    if len(blobs) > 0 and header_length <= _LAYOUT_MAX_HEADER:
        key = body[:header_length]
        layout = _LAYOUTS.get(key)
        if layout is not None and layout.total == len(blobs):
            return layout.decode(blobs, max_bytes)
    try:
        header = json.loads(body[:header_length])
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidRequest(f"request header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise InvalidRequest("request body must be a JSON object with an 'inputs' list")
    request, layout = _decode_header(header, blobs, max_bytes)
    if key is not None and layout is not None:
        if len(_LAYOUTS) >= _LAYOUT_CACHE_SIZE:
            _LAYOUTS.clear()  # many distinct headers: start over rather than track recency
        _LAYOUTS[key] = layout
    return request


# Clients send the same binary-extension header for every request of a shape (tritonclient
# does), so the parsed and validated header is kept by its bytes: a repeated header skips
# json.loads and the checks, and only its tensors are cut from the body.
_LAYOUT_MAX_HEADER = 4096
_LAYOUT_CACHE_SIZE = 1024


@dataclass(frozen=True)
class _BinaryLayout:
    """A header whose inputs all carry binary data: where each tensor lies in the body."""

    inputs: tuple[tuple[str, str, tuple[int, ...], int], ...]  # name, datatype, shape, bytes
    total: int
    id: str | None
    outputs: tuple[RequestedOutput, ...] | None
    binary_outputs: bool
    parameters: dict[str, Any]

    def decode(self, blobs: memoryview, max_bytes: int) -> InferRequest:
        inputs: dict[str, np.ndarray] = {}
        offset = 0
        for name, datatype, shape, size in self.inputs:
            raw = blobs[offset : offset + size]
            inputs[name] = tensor_from_raw(name, datatype, shape, raw, max_bytes)
            offset += size
        return InferRequest(
            inputs=inputs,
            id=self.id,
            outputs=None if self.outputs is None else list(self.outputs),
            binary_outputs=self.binary_outputs,
            parameters=dict(self.parameters),
        )


_LAYOUTS: dict[bytes, _BinaryLayout] = {}


def _decode_header(
    header: dict[str, Any], blobs: memoryview, max_bytes: int
) -> tuple[InferRequest, _BinaryLayout | None]:
    """The request, and its layout when every input took its data from the body."""
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("request needs a non-empty 'inputs' list")
    params = _parameters(header.get("parameters"), "request")
    inputs: dict[str, np.ndarray] = {}
    binary: list[tuple[str, str, tuple[int, ...], int]] = []
    offset = 0
    for t in raw_inputs:
        if not isinstance(t, dict):
            raise InvalidRequest("each entry of 'inputs' must be an object")
        name = t.get("name")
        if not isinstance(name, str):
            raise InvalidRequest("an input has no 'name' string")
        if name in inputs:
            raise InvalidRequest(f"input '{name}' is given twice")
        shape = parse_shape(t.get("shape"), name)
        tparams = _parameters(t.get("parameters"), f"input '{name}'")
        size = tparams.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidRequest(
                    f"input '{name}': binary_data_size must be a non-negative integer"
                )
            if offset + size > len(blobs):
                raise InvalidRequest(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(blobs) - offset} binary bytes left)"
                )
            raw = blobs[offset : offset + size]
            offset += size
            inputs[name] = tensor_from_raw(name, t.get("datatype"), shape, raw, max_bytes)
            binary.append((name, t["datatype"], shape, size))
        else:
            if "data" not in t:
                raise InvalidRequest(f"input '{name}' has neither 'data' nor binary_data_size")
            inputs[name] = tensor_from_json(name, t.get("datatype"), shape, t["data"], max_bytes)
    if offset != len(blobs):
        raise InvalidRequest(
            f"{len(blobs) - offset} binary bytes after the header are not claimed by any input"
        )
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidRequest("parameter binary_data_output must be true or false")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string")
    outputs = _requested_outputs(header.get("outputs"), binary_default)
    request = InferRequest(
        inputs=inputs,
        id=request_id,
        outputs=outputs,
        binary_outputs=binary_default,
        parameters=params,
    )
    layout = None
    if len(binary) == len(inputs):
        layout = _BinaryLayout(
            tuple(binary),
            offset,
            request_id,
            None if outputs is None else tuple(outputs),
            binary_default,
            dict(params),
        )
    return request, layout


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}: 'parameters' must be an object")
    return value


def _requested_outputs(value: object, binary_default: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidRequest("'outputs' must be a list")
    out: list[RequestedOutput] = []
    for o in value:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise InvalidRequest("each entry of 'outputs' must be an object with a 'name'")
        binary = _parameters(o.get("parameters"), f"output '{o['name']}'").get(
            "binary_data", binary_default
        )
        if not isinstance(binary, bool):
            raise InvalidRequest(f"output '{o['name']}': binary_data must be true or false")
        out.append(RequestedOutput(o["name"], binary))
    return out


def encode_rest_response(
    model: str,
    version: str,
    request_id: str | None,
    outputs: Sequence[tuple[str, np.ndarray, bool]],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    if request_id is None and outputs and all(_fixed_binary(a, b) for _, a, b in outputs):
        # Fixed-size binary outputs: the JSON header depends only on names, dtypes and shapes.
        raw = [raw_bytes(array, name) for name, array, _ in outputs]
        key = (model, version, tuple((name, a.dtype, a.shape) for name, a, _ in outputs))
        cached = _RESPONSE_HEADERS.get(key)
        if cached is None:
            cached = _response_header(model, version, outputs, raw)
            if len(_RESPONSE_HEADERS) >= _LAYOUT_CACHE_SIZE:
                _RESPONSE_HEADERS.clear()
            _RESPONSE_HEADERS[key] = cached
        return b"".join([cached, *raw]), len(cached)
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array, binary in outputs:
        if binary:
            blob = raw_bytes(array, name)
            blobs.append(blob)
            tensors.append(
                {
                    "name": name,
                    "datatype": oip_datatype(array, name),
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
            )
        else:
            tensors.append(tensor_to_json(name, array))
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request_id is not None:
        doc["id"] = request_id
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


_RESPONSE_HEADERS: dict[tuple[Any, ...], bytes] = {}


def _fixed_binary(array: np.ndarray, binary: bool) -> bool:
    return binary and array.dtype != _OBJECT and array.dtype.kind not in "SU"


def _response_header(
    model: str, version: str, outputs: Sequence[tuple[str, np.ndarray, bool]], blobs: list[bytes]
) -> bytes:
    tensors = [
        {
            "name": name,
            "datatype": oip_datatype(array, name),
            "shape": list(array.shape),
            "parameters": {"binary_data_size": len(blob)},
        }
        for (name, array, _), blob in zip(outputs, blobs, strict=True)
    ]
    doc = {"model_name": model, "model_version": version, "outputs": tensors}
    return json.dumps(doc, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- validation
def check_inputs(info: ModelInfo, inputs: Mapping[str, np.ndarray]) -> int:
    """Check a request against the model's signature; returns its number of batch rows."""
    specs = {s.name: s for s in info.inputs}
    for name in inputs:
        if name not in specs:
            raise InvalidRequest(
                f"model '{info.name}' has no input '{name}' (inputs: {', '.join(specs)})"
            )
    rows: int | None = None
    for spec in info.inputs:
        arr = inputs.get(spec.name)
        if arr is None:
            if spec.optional:
                continue
            raise InvalidRequest(f"model '{info.name}' needs input '{spec.name}'; it is missing")
        got = BYTES if arr.dtype == _OBJECT else NUMPY_TO_OIP.get(arr.dtype)
        if got is None:  # str(dtype) is slow: only for the error message
            got = str(arr.dtype)
        if got != spec.datatype:
            raise InvalidRequest(
                f"input '{spec.name}' of model '{info.name}' has datatype {got}, "
                f"expected {spec.datatype}"
            )
        if len(arr.shape) != len(spec.shape) or any(
            want != -1 and want != have for want, have in zip(spec.shape, arr.shape, strict=True)
        ):
            raise InvalidRequest(
                f"input '{spec.name}' of model '{info.name}' has shape {list(arr.shape)}, "
                f"expected {list(spec.shape)} (-1: any size)"
            )
        limit = info.max_sequence_length
        if (
            limit is not None
            and len(spec.shape) >= 2
            and spec.shape[1] == -1
            and arr.shape[1] > limit
        ):
            raise InvalidRequest(
                f"input '{spec.name}' of model '{info.name}' has sequence length "
                f"{arr.shape[1]}, more than the model's max_sequence_length {limit}"
            )
        if rows is None:
            rows = arr.shape[0]
        elif arr.shape[0] != rows:
            raise InvalidRequest(
                f"inputs of model '{info.name}' disagree on the batch dimension "
                f"({rows} vs {arr.shape[0]} for '{spec.name}')"
            )
    if not rows:
        raise InvalidRequest(f"request for model '{info.name}' has no rows (batch dimension 0)")
    if rows > max(info.max_batch_size, 1):
        raise InvalidRequest(
            f"request has {rows} rows, more than model '{info.name}' max_batch_size "
            f"{info.max_batch_size}"
        )
    return rows


def request_units(info: ModelInfo, inputs: Mapping[str, np.ndarray], rows: int) -> int:
    """A checked request's cost in batch units: its rows, times how many profile-length
    sequences each row holds (a 4,096-token row costs 32 rows of 128 tokens)."""
    length = 1
    for spec in info.inputs:
        arr = inputs.get(spec.name)
        if arr is not None and len(spec.shape) >= 2 and spec.shape[1] == -1:
            length = max(length, int(arr.shape[1]))
    return rows * max(1, math.ceil(length / PROFILE_SEQUENCE_LENGTH))


def check_outputs(info: ModelInfo, requested: list[RequestedOutput] | None) -> None:
    if requested is None:
        return
    names = {s.name for s in info.outputs}
    for o in requested:
        if o.name not in names:
            raise InvalidRequest(
                f"model '{info.name}' has no output '{o.name}' (outputs: {', '.join(names)})"
            )
