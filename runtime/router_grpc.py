"""The router's Open Inference Protocol over gRPC (tritonclient's stubs, grpc.aio).

A ModelInfer request is re-framed, not decoded: its raw_input_contents become the binary
tensor extension's blobs after a small JSON header, and the group's binary outputs become
raw_output_contents. Only a request that sends typed `contents` instead of raw bytes is
decoded (with the group front end's own decoder, so its errors are the group's) and sent as
raw bytes. Errors map to the gRPC codes the group front end uses.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from statmux.runtime.frontend import EXTENSIONS, SERVER_NAME, SERVER_VERSION
from statmux.runtime.grpc_server import decode_grpc_request
from statmux.runtime.oip_codec import raw_bytes
from statmux.runtime.router_core import GatewayTimeout, Router, _error_text
from statmux.runtime.router_upstream import HEADER_LENGTH, Reply
from statmux.runtime.serving_errors import (
    EngineFailed,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    Rejected,
    ServingError,
    Unavailable,
)

_BINARY_B = b"application/octet-stream"
_HL = HEADER_LENGTH.encode()
_BY_STATUS: dict[int, type[ServingError]] = {
    400: InvalidRequest,
    404: ModelNotFound,
    413: PayloadTooLarge,
    429: Rejected,
    500: EngineFailed,
    503: Unavailable,
    504: GatewayTimeout,
}


def reply_error(reply: Reply) -> ServingError:
    """A group's non-200 REST answer as the ServingError it came from."""
    cls = _BY_STATUS.get(reply.status) or (InvalidRequest if reply.status < 500 else EngineFailed)
    return cls(_error_text(reply))


def rest_infer_body(req: Any, max_bytes: int) -> tuple[bytes, int, int]:
    """(body, JSON header length, rows) of the binary-extension REST request for `req`."""
    raw = list(req.raw_input_contents)
    if raw and len(raw) != len(req.inputs):
        raise InvalidRequest(
            f"{len(raw)} raw_input_contents for {len(req.inputs)} inputs: give one per input"
        )
    if not req.inputs:
        raise InvalidRequest("request needs at least one input")
    total = sum(len(r) for r in raw)
    if total > max_bytes:
        raise PayloadTooLarge(
            f"raw inputs have {total} bytes, more than the maximum request size {max_bytes} bytes"
        )
    if not raw:  # typed contents: decode once (the group's checks), send as raw bytes
        decoded = decode_grpc_request(req, max_bytes)
        raw = [raw_bytes(decoded.inputs[t.name], t.name) for t in req.inputs]
    inputs = [
        {
            "name": t.name,
            "datatype": t.datatype,
            "shape": list(t.shape),
            "parameters": {"binary_data_size": len(blob)},
        }
        for t, blob in zip(req.inputs, raw, strict=True)
    ]
    header: dict[str, Any] = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if req.id:
        header["id"] = req.id
    if req.outputs:
        header["outputs"] = [
            {"name": o.name, "parameters": {"binary_data": True}} for o in req.outputs
        ]
    head = json.dumps(header, separators=(",", ":")).encode()
    shape = list(req.inputs[0].shape)
    rows = shape[0] if shape and shape[0] > 0 else 1
    return b"".join([head, *raw]), len(head), rows


def grpc_infer_response(reply: Reply, request_id: str) -> Any:
    """The group's binary REST answer as a ModelInferResponse with raw_output_contents."""
    body = reply.body
    cut = int(reply.header_length) if reply.header_length is not None else len(body)
    header = json.loads(body[:cut])
    response = service_pb2.ModelInferResponse(
        model_name=header.get("model_name", ""),
        model_version=header.get("model_version", ""),
        id=request_id,
    )
    offset = cut
    for o in header.get("outputs", []):
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            raise EngineFailed(f"the group answered output '{o.get('name')}' without binary data")
        out = response.outputs.add()
        out.name = o["name"]
        out.datatype = o["datatype"]
        out.shape.extend(o["shape"])
        response.raw_output_contents.append(body[offset : offset + size])
        offset += size
    return response


class RouterGrpc(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, router: Router, max_request_bytes: int) -> None:
        self.router = router
        self.max_request_bytes = max_request_bytes

    async def _fail(self, context: grpc.aio.ServicerContext, e: ServingError) -> NoReturn:
        await context.abort(grpc.StatusCode[e.grpc_code], str(e))
        raise AssertionError("context.abort returns only by raising")

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        router = self.router
        arrival = router.clock()
        model = request.model_name
        try:
            router.check_model(model)
            try:
                body, header_length, rows = rest_infer_body(request, self.max_request_bytes)
            except ServingError:
                router.record_invalid(model)
                raise
            version = request.model_version
            path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
            headers = b"%s: %d\r\nContent-Type: %s\r\n" % (_HL, header_length, _BINARY_B)
            reply = await router.infer(model, path, body, headers, rows, arrival)
            if reply.status != 200:
                raise reply_error(reply)
            return grpc_infer_response(reply, request.id)
        except ServingError as e:
            await self._fail(context, e)

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=self.router.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.router.ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self.router.check_model(request.name)
        except ServingError as e:
            await self._fail(context, e)
        return service_pb2.ModelReadyResponse(ready=self.router.model_ready(request.name))

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        doc = {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}
        return json_format.ParseDict(doc, service_pb2.ServerMetadataResponse())

    async def _get(self, context: Any, model: str, version: str, suffix: str) -> Any:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + suffix
        try:
            reply = await self.router.forward(model, "GET", path)
            if reply.status != 200:
                raise reply_error(reply)
        except ServingError as e:
            await self._fail(context, e)
        return json.loads(reply.body)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        doc = await self._get(context, request.name, request.version, "")
        return json_format.ParseDict(doc, service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        doc = await self._get(context, request.name, request.version, "/config")
        return json_format.ParseDict(
            {"config": doc}, service_pb2.ModelConfigResponse(), ignore_unknown_fields=True
        )

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.name:
            doc = await self._get(context, request.name, request.version, "/stats")
        else:
            doc = await self.router.all_stats()
        return json_format.ParseDict(
            doc, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True
        )

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "streaming inference is not supported")

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return json_format.ParseDict(
            {"models": self.router.repository_index(request.ready)},
            service_pb2.RepositoryIndexResponse(),
        )

    async def _change(self, context: Any, model: str, action: str) -> None:
        try:
            replies = await self.router.forward_each(
                model, "POST", f"/v2/repository/models/{model}/{action}", b""
            )
            for reply in replies:
                if reply.status != 200:
                    raise reply_error(reply)
        except ServingError as e:
            await self._fail(context, e)

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if any(k == "config" or k.startswith("file:") for k in request.parameters):
            await self._fail(
                context,
                InvalidRequest(
                    "load parameters config/file: are not supported: statmux loads the models "
                    "of its Plan"
                ),
            )
        await self._change(context, request.model_name, "load")
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._change(context, request.model_name, "unload")
        return service_pb2.RepositoryModelUnloadResponse()


async def start_router_grpc(
    router: Router, host: str, port: int, max_request_bytes: int
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_request_bytes + 65536),
            ("grpc.max_send_message_length", -1),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        RouterGrpc(router, max_request_bytes), server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the gRPC server to {host}:{port}")
    await server.start()
    return server, bound
