"""The Open Inference Protocol over gRPC (proto/inference.proto: package inference, service GRPCInferenceService), for
tritonclient.grpc, Triton's perf_analyzer and clients generated from the proto, on GRPC_PORT (8001) in each worker.

    server = serve(app, "127.0.0.1", 8001, threads=8)    # in a worker, after the fork; stopped at its exit

Every call is answered by the API's own /v2 route, called in-process through the WSGI app (Gateway.call): one home
for every rule. Credentials (basic auth in the `authorization` metadata, as tritonclient sends them), the guessing
limit, the version named or chosen by the routing (the `x-routing-key` metadata, else the user), the inputs' rules,
batching, drift counts, the prediction log, the metrics and the access log are those of a REST request; the metrics
name the gRPC method as the endpoint. A tensor's data comes as typed `contents` or as `raw_input_contents`, which are
Triton's binary tensor data (the REST extension's layout): raw inputs get raw outputs, as MLServer and Triton answer.
Errors are gRPC status codes with the REST message (STATUS); a crash is INTERNAL with no trace. The standard health
service (grpc.health.v1.Health) answers SERVING without credentials, for Kubernetes' gRPC probes.
"""

import atexit
import io
import json
import logging
import sys
from concurrent import futures
from urllib.parse import quote

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tabserve.grpcgen import inference_pb2 as pb
from tabserve.grpcgen import inference_pb2_grpc
from tabserve.wsgi import GRPC_KEY, MAX_BODY_BYTES

logger = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
GRACE_SECONDS = 5  # calls in flight at a worker's exit get this long to finish
STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
          429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE}
# The field of InferTensorContents that holds each datatype's elements.
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}
METADATA_HEADERS = {"authorization": "HTTP_AUTHORIZATION", "x-routing-key": "HTTP_X_ROUTING_KEY",
                    "x-request-id": "HTTP_X_REQUEST_ID", "x-forwarded-for": "HTTP_X_FORWARDED_FOR"}


class Refused(Exception):
    """A request refused before it reaches the app: (status code, message)."""


def model_path(name, version, tail=""):
    """/v2/models/{name}[/versions/{version}]{tail}, the names quoted as a client would send them."""
    path = f"/v2/models/{quote(name, safe='')}"
    return path + (f"/versions/{quote(version, safe='')}" if version else "") + tail


def peer_address(peer):
    """The client's address in a gRPC peer string ("ipv4:127.0.0.1:5050", "ipv6:[::1]:5050")."""
    kind, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else rest
    return host.strip("[]") or "unknown"


def parameters_of(parameters):
    """InferParameter values as the JSON the REST routes take."""
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in parameters.items()
            if value.WhichOneof("parameter_choice")}


def tensor_data(tensor, where):
    """A tensor's typed contents as a JSON list (BYTES as text); Refused when BYTES are not UTF-8."""
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        return []  # the app names the datatypes it takes
    values = list(getattr(tensor.contents, field))
    if tensor.datatype != "BYTES":
        return values
    try:
        return [value.decode("utf-8") for value in values]
    except UnicodeDecodeError:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{where}.contents.bytes_contents must be UTF-8 text") from None


def infer_body(request):
    """(body, header length) of the REST inference request that says what this one says, in Triton's binary layout
    when the tensors come raw."""
    raw = list(request.raw_input_contents)
    if raw and (len(raw) != len(request.inputs) or any(t.HasField("contents") for t in request.inputs)):
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"raw_input_contents must hold one entry per input "
                      f"({len(request.inputs)}), got {len(raw)}, and then no input may have contents")
    inputs = []
    for index, tensor in enumerate(request.inputs):
        item = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        parameters = parameters_of(tensor.parameters)
        if raw:
            parameters["binary_data_size"] = len(raw[index])
        else:
            item["data"] = tensor_data(tensor, f"inputs[{index}]")
        inputs.append({**item, "parameters": parameters} if parameters else item)
    header, parameters = {"inputs": inputs}, parameters_of(request.parameters)
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [{"name": output.name, "parameters": {**parameters_of(output.parameters),
                                                                   "binary_data": bool(raw)}}
                             for output in request.outputs]
    else:
        parameters["binary_data_output"] = bool(raw)
    header["parameters"] = parameters
    text = json.dumps(header).encode()
    return text + b"".join(raw), len(text)


def infer_response(headers, body):
    """The ModelInferResponse of the REST answer: its binary outputs as raw_output_contents, the others typed."""
    length = int(headers.get("inference-header-content-length", len(body)))
    answer, offset = json.loads(body[:length]), length
    response = pb.ModelInferResponse(model_name=answer["model_name"], model_version=answer["model_version"],
                                     id=answer.get("id", ""))
    for output in answer["outputs"]:
        tensor = response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            response.raw_output_contents.append(body[offset:offset + size])
            offset += size
        elif output["datatype"] == "BYTES":
            tensor.contents.bytes_contents.extend(text.encode() for text in output["data"])
        else:
            getattr(tensor.contents, CONTENTS[output["datatype"]]).extend(output["data"])
    return response


class Gateway(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Each method of the service, answered by the REST route that does the same."""

    def __init__(self, app):
        self.app = app

    def call(self, context, method, verb, path, body=b"", header_length=None):
        """(HTTP status, headers, body) of the app's answer to this request."""
        environ = {"REQUEST_METHOD": verb, "PATH_INFO": path.encode().decode("latin-1"), "QUERY_STRING": "",
                   "SERVER_NAME": "grpc", "SERVER_PORT": "0", "SERVER_PROTOCOL": "HTTP/2", "wsgi.version": (1, 0),
                   "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
                   "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
                   "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/octet-stream" if body else "",
                   "REMOTE_ADDR": peer_address(context.peer()), GRPC_KEY: f"grpc {method}"}
        if header_length is not None:
            environ["HTTP_INFERENCE_HEADER_CONTENT_LENGTH"] = str(header_length)
        for key, value in context.invocation_metadata():
            if key in METADATA_HEADERS and isinstance(value, str):
                environ[METADATA_HEADERS[key]] = value
        answered = {}

        def start_response(status, headers, exc_info=None):
            answered["status"], answered["headers"] = int(status[:3]), {k.lower(): v for k, v in headers}

        chunks = self.app(environ, start_response)
        content = b"".join(chunks)
        getattr(chunks, "close", lambda: None)()
        context.set_trailing_metadata((("x-request-id", answered["headers"].get("x-request-id", "")),))
        return answered["status"], answered["headers"], content

    def answer(self, context, method, verb, path, body=b"", header_length=None):
        """(headers, body) of the app's answer, or the call aborted with the status code that its status says."""
        status, headers, content = self.call(context, method, verb, path, body, header_length)
        if status != 200:
            context.abort(STATUS.get(status, grpc.StatusCode.INTERNAL), error_message(content))
        return headers, content

    def json(self, context, method, verb, path, body=b""):
        return json.loads(self.answer(context, method, verb, path, body)[1])

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.json(context, "ServerLive", "GET", "/v2/health/live")["live"])

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.json(context, "ServerReady", "GET", "/v2/health/ready")["ready"])

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self.json(context, "ServerMetadata", "GET", "/v2"))

    def ModelReady(self, request, context):
        status, _, content = self.call(context, "ModelReady", "GET", model_path(request.name, request.version,
                                                                                 "/ready"))
        if status not in (200, 404):  # a model or version not served is not ready; a refusal is a refusal
            context.abort(STATUS.get(status, grpc.StatusCode.INTERNAL), error_message(content))
        return pb.ModelReadyResponse(ready=status == 200)

    def ModelMetadata(self, request, context):
        answer = self.json(context, "ModelMetadata", "GET", model_path(request.name, request.version))
        tensors = {side: [pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"],
                                                                  shape=t["shape"]) for t in answer[side]]
                   for side in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(name=answer["name"], versions=answer["versions"],
                                        platform=answer["platform"], **tensors)

    def ModelInfer(self, request, context):
        try:
            body, length = infer_body(request)
        except Refused as refused:
            context.abort(*refused.args)
        path = model_path(request.model_name, request.model_version, "/infer")
        return infer_response(*self.answer(context, "ModelInfer", "POST", path, body, length))

    def RepositoryIndex(self, request, context):
        body = json.dumps({"ready": request.ready}).encode()
        entries = self.json(context, "RepositoryIndex", "POST", "/v2/repository/index", body)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**entry)
                                                  for entry in entries])


def error_message(content):
    """The REST error's message ({"error": ...}), or a plain one."""
    try:
        return str(json.loads(content)["error"])
    except (ValueError, KeyError, TypeError):
        return "the request was refused"


def serve(app, host, port, threads):
    """The gRPC server of this worker on host:port (shared with the other workers: SO_REUSEPORT), started; it stops
    at the worker's exit, letting calls in flight finish."""
    server = grpc.server(futures.ThreadPoolExecutor(threads, thread_name_prefix="grpc"),
                         options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", MAX_BODY_BYTES)])
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Gateway(app), server)
    checks = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    for service in ("", SERVICE):  # the app exists only once the model is loaded and self-tested
        checks.set(service, health_pb2.HealthCheckResponse.SERVING)
    try:
        server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        logger.error("gRPC cannot listen on %s:%d (is the port taken?): this worker serves HTTP only", host, port)
        return None
    server.start()
    atexit.register(lambda: (checks.enter_graceful_shutdown(), server.stop(GRACE_SECONDS).wait()))
    logger.info("serving the Open Inference Protocol over gRPC on %s:%d", host, port)
    return server
