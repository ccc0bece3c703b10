"""Open Inference Protocol over gRPC (inference.GRPCInferenceService, grpc.aio).

Uses the server stubs and messages shipped in tritonclient's grpc package rather than
copies of the proto files. ModelInfer always answers with raw_output_contents (the only form
tritonclient.grpc's `as_numpy` reads). Errors map to status codes via serving_errors:
NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED (admission, too large; with a retry-after
trailer), UNAVAILABLE. A request that is not a valid protobuf is INVALID_ARGUMENT (grpc
itself would answer UNKNOWN). A passed deadline cancels the request (counted CANCELED).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from statmux.runtime.frontend import FrontEnd
from statmux.runtime.oip_codec import (
    BYTES,
    InferRequest,
    RequestedOutput,
    numpy_dtype,
    oip_datatype,
    parse_shape,
    raw_bytes,
    tensor_from_raw,
)
from statmux.runtime.server_limits import ServerLimits
from statmux.runtime.serving_errors import (
    InvalidRequest,
    PayloadTooLarge,
    Rejected,
    ServingError,
)

log = logging.getLogger(__name__)

# Which InferTensorContents field carries each datatype when raw contents are not used.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


def decode_grpc_request(req: Any, max_bytes: int) -> InferRequest:
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise InvalidRequest(
            f"{len(raw)} raw_input_contents for {len(req.inputs)} inputs: give one per input"
        )
    total = sum(len(r) for r in raw)
    if total > max_bytes:
        raise PayloadTooLarge(
            f"raw inputs have {total} bytes, more than the maximum request size {max_bytes} bytes"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(req.inputs):
        if t.name in inputs:
            raise InvalidRequest(f"input '{t.name}' is given twice")
        shape = parse_shape(list(t.shape), t.name)
        if raw:
            inputs[t.name] = tensor_from_raw(t.name, t.datatype, shape, raw[i], max_bytes)
        else:
            inputs[t.name] = _from_contents(t, shape)
    if not inputs:
        raise InvalidRequest("request needs at least one input")
    outputs = [RequestedOutput(o.name, True) for o in req.outputs] or None
    return InferRequest(inputs=inputs, id=req.id or None, outputs=outputs, binary_outputs=True)


def _from_contents(t: Any, shape: tuple[int, ...]) -> np.ndarray:
    dtype = numpy_dtype(t.datatype, t.name)
    field = _CONTENTS_FIELD.get(t.datatype)
    if field is None:
        raise InvalidRequest(f"input '{t.name}': {t.datatype} must be sent in raw_input_contents")
    values = list(getattr(t.contents, field))
    try:
        if t.datatype == BYTES:
            arr = np.empty(len(values), dtype=dtype)
            arr[:] = values
        else:
            arr = np.asarray(values, dtype=dtype)
    except (OverflowError, ValueError) as e:
        raise InvalidRequest(f"input '{t.name}': contents do not fit {t.datatype}: {e}") from None
    count = math.prod(shape)
    if arr.size != count:
        raise InvalidRequest(
            f"input '{t.name}': {arr.size} elements in contents.{field}, but shape "
            f"{list(shape)} needs {count}"
        )
    return arr.reshape(shape)


class GrpcServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, front: FrontEnd) -> None:
        self.front = front

    async def _fail(self, context: grpc.aio.ServicerContext, e: ServingError) -> NoReturn:
        trailer: tuple[tuple[str, str], ...] = ()
        if isinstance(e, Rejected):
            trailer = (("retry-after", str(max(1, math.ceil(e.retry_after_s)))),)
        await context.abort(grpc.StatusCode[e.grpc_code], str(e), trailing_metadata=trailer)
        raise AssertionError("context.abort returns only by raising")

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=self.front.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.front.ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            ready = self.front.model_ready(request.name, request.version or None)
        except ServingError as e:
            await self._fail(context, e)
        return service_pb2.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return json_format.ParseDict(
            self.front.server_metadata(), service_pb2.ServerMetadataResponse()
        )

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            doc = self.front.model_metadata(request.name, request.version or None)
        except ServingError as e:
            await self._fail(context, e)
        return json_format.ParseDict(doc, service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            doc = self.front.model_config(request.name, request.version or None)
        except ServingError as e:
            await self._fail(context, e)
        return json_format.ParseDict(
            {"config": doc}, service_pb2.ModelConfigResponse(), ignore_unknown_fields=True
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        front = self.front
        arrival = front.clock()
        model, version = request.model_name, request.model_version or None
        with front.handling():
            try:
                with front.refusals(model, arrival):
                    front.info(model, version)
                    decoded = decode_grpc_request(request, front.max_request_bytes)
                info, outputs = await front.infer(model, version, decoded, arrival)
                started = front.clock()
                response = service_pb2.ModelInferResponse(
                    model_name=info.name, model_version=info.version, id=request.id
                )
                for name, array, _binary in outputs:
                    out = response.outputs.add()
                    out.name = name
                    out.datatype = oip_datatype(array, name)
                    out.shape.extend(array.shape)
                    response.raw_output_contents.append(raw_bytes(array, name))
                front.record_output(model, started)
                return response
            except ServingError as e:
                await self._fail(context, e)
            except Exception:  # a bug: log it, answer a generic error (never its text)
                log.exception("unhandled error in ModelInfer for model %r", model)
                await context.abort(grpc.StatusCode.INTERNAL, "internal server error")

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "streaming inference is not supported")

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            doc = self.front.statistics(request.name or None, request.version or None)
        except ServingError as e:
            await self._fail(context, e)
        return json_format.ParseDict(
            doc, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True
        )

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return json_format.ParseDict(
            {"models": self.front.repository_index(request.ready)},
            service_pb2.RepositoryIndexResponse(),
        )

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if any(k == "config" or k.startswith("file:") for k in request.parameters):
                raise InvalidRequest(
                    "load parameters config/file: are not supported: statmux loads the models "
                    "of its Plan"
                )
            await self.front.load(request.model_name)
        except ServingError as e:
            await self._fail(context, e)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            await self.front.unload(request.model_name)
        except ServingError as e:
            await self._fail(context, e)
        return service_pb2.RepositoryModelUnloadResponse()


class _Malformed:
    """What a request that is not a valid protobuf deserializes to."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Answers INVALID_ARGUMENT (not grpc's UNKNOWN) to bytes that are not the request type."""

    def __init__(self, front: FrontEnd) -> None:
        self.front = front

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        deserialize = handler.request_deserializer
        behavior = handler.unary_unary
        method = str(details.method).rsplit("/", 1)[-1]

        def safe(data: bytes) -> Any:
            try:
                return deserialize(data)
            except Exception as e:  # DecodeError, or worse: never grpc's UNKNOWN
                return _Malformed(e)

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                if method == "ModelInfer":  # names no model: counted as such
                    self.front.unknown_model_requests += 1
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the {method} request is not a valid inference.{method}Request protobuf",
                )
            return await behavior(request, context)

        return handler._replace(request_deserializer=safe, unary_unary=guarded)


class CallLimit(grpc.aio.ServerInterceptor):
    """Serves at most `limit` calls at once; one more gets RESOURCE_EXHAUSTED at once, with
    a message naming the limit and a retry-after trailer (an inference call among them is
    counted as rejected, like any request refused before the scheduler)."""

    def __init__(self, front: FrontEnd, limit: int) -> None:
        self.front = front
        self.limit = limit
        self.active = 0  # on the event loop only: no lock

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        infer = str(details.method).endswith("/ModelInfer")

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.active >= self.limit:
                err = Rejected(
                    f"the server is serving {self.limit} gRPC calls already, its limit "
                    "(--grpc-max-calls); retry later",
                    retry_after_s=1.0,
                )
                if infer:
                    self.front.refused(request.model_name, err, self.front.clock())
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, str(err), trailing_metadata=_RETRY_1S
                )
            self.active += 1
            try:
                return await behavior(request, context)
            finally:
                self.active -= 1

        return handler._replace(unary_unary=limited)


_RETRY_1S = (("retry-after", "1"),)


async def start_grpc(
    front: FrontEnd, host: str, port: int, limits: ServerLimits | None = None
) -> tuple[grpc.aio.Server, int]:
    """Serve on host:port from the running event loop; returns the server and its port.

    `limits` bound what clients can hold (see ServerLimits.grpc_options): connections, the
    HTTP/2 handshake time, streams per connection, calls at once, idle and old connections.
    """
    limits = limits or ServerLimits()
    server = grpc.aio.server(
        # outermost first: a malformed message is answered before it takes a call slot
        interceptors=[MalformedRequests(front), CallLimit(front, limits.grpc_max_calls)],
        options=limits.grpc_options(front.max_request_bytes + 65536),
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(GrpcServicer(front), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the gRPC server to {host}:{port}")
    await server.start()
    return server, bound
