"""A gRPC load generator for the benchmarks, as wrk is for HTTP: Open Inference Protocol ModelInfer calls, each of
`connections` clients on a channel of its own with one call in flight, for `duration` seconds; the same figures as
tools/measure.py's wrk() (requests/s, p50, p99 and p99.9 in ms, failures).

    figures = grpc_load("127.0.0.1:8001", "iris-classifier", connections=16, duration=5, metadata=AUTHORIZATION)

The request is what tritonclient.grpc sends: one FP32 tensor [1, 4] in raw_input_contents, built with Triton's own
proto (tritonclient.grpc.service_pb2), so that the same bytes go to tabserve and to MLServer. The client is Python
(grpc.aio, one event loop, on the machine's cores beside the server): at many connections it is a ceiling of its own,
the same for every server measured with it, which is why a figure is only compared with another from this client.
"""

import asyncio
import math
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tests.support import FLOWERS


def infer_request(model):
    """A ModelInferRequest of one setosa, FP32 [1, 4], raw, as tritonclient.grpc builds it."""
    tensor = pb.ModelInferRequest().InferInputTensor(name="input-0", datatype="FP32", shape=[1, 4])
    return pb.ModelInferRequest(model_name=model, inputs=[tensor],
                                raw_input_contents=[np.array([FLOWERS["setosa"]], dtype="<f4").tobytes()])


async def client(target, request, metadata, until, latencies, failures):
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await channel.channel_ready()
        while (started := time.perf_counter()) < until:
            try:
                await stub.ModelInfer(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError:
                failures.append(1)
            else:
                latencies.append(time.perf_counter() - started)


async def load(target, model, connections, duration, metadata):
    latencies, failures, request = [], [], infer_request(model)
    until = time.perf_counter() + duration
    await asyncio.gather(*(client(target, request, metadata, until, latencies, failures)
                           for _ in range(connections)))
    return latencies, len(failures)


def grpc_load(target, model, connections, duration, metadata=()):
    latencies, failures = asyncio.run(load(target, model, connections, duration, tuple(metadata)))
    if not latencies:
        return {"rps": 0.0, "p50": math.nan, "p99": math.nan, "p999": math.nan, "failures": failures or connections}
    p50, p99, p999 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99, 99.9))
    return {"rps": len(latencies) / duration, "p50": p50, "p99": p99, "p999": p999, "failures": failures}
