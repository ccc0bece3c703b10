"""Run INSIDE the real node's network namespace (nsenter --net): tritonclient requests to the
router Service's ClusterIP, as a pod or a node-local client would send them.

    python node_client.py infer  HOST HTTP_PORT GRPC_PORT|- MODEL...   -> JSON {model: outputs}
    python node_client.py loop   HOST HTTP_PORT SECONDS MODEL...       -> JSON {model: [ok, errors]}

`infer` sends each model the same input_ids over REST and (when a gRPC port is given) gRPC,
checks both agree, and prints the REST output. `loop` keeps sending REST requests for the
given models for SECONDS and counts answers and errors (with the first few error texts).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import tritonclient.grpc as tg
import tritonclient.http as th

IDS = np.array([[101, 7, 42, 99, 5, 102], [101, 8, 8, 8, 3, 102]], dtype=np.int64)
OUTPUT = "last_hidden_state"


def rest_infer(client: th.InferenceServerClient, model: str) -> np.ndarray:
    inp = th.InferInput("input_ids", list(IDS.shape), "INT64")
    inp.set_data_from_numpy(IDS)
    out = client.infer(model, [inp]).as_numpy(OUTPUT)
    assert out is not None, f"{model}: no {OUTPUT} in the answer"
    return out


def infer(host: str, http_port: str, grpc_port: str, models: list[str]) -> dict[str, object]:
    client = th.InferenceServerClient(f"{host}:{http_port}", network_timeout=120)
    result: dict[str, object] = {}
    for model in models:
        rest = rest_infer(client, model)
        if grpc_port != "-":
            g = tg.InferenceServerClient(f"{host}:{grpc_port}")
            ginp = tg.InferInput("input_ids", list(IDS.shape), "INT64")
            ginp.set_data_from_numpy(IDS)
            via_grpc = g.infer(model, [ginp], client_timeout=120).as_numpy(OUTPUT)
            g.close()
            np.testing.assert_array_equal(rest, via_grpc)
        result[model] = rest.tolist()
    client.close()
    return result


def loop(host: str, http_port: str, seconds: float, models: list[str]) -> dict[str, object]:
    client = th.InferenceServerClient(f"{host}:{http_port}", network_timeout=60)
    counts: dict[str, list[int]] = {m: [0, 0] for m in models}
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for model in models:
            try:
                rest_infer(client, model)
                counts[model][0] += 1
            except Exception as e:  # every failure is counted and reported, none hidden
                counts[model][1] += 1
                if len(errors) < 5:
                    errors.append(f"{model}: {type(e).__name__}: {e}")
        time.sleep(0.05)
    client.close()
    return {"counts": counts, "errors": errors}


def main(argv: list[str]) -> int:
    mode, host, http_port, arg, *models = argv
    if mode == "infer":
        out = infer(host, http_port, arg, models)
    else:
        out = loop(host, http_port, float(arg), models)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
