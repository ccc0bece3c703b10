"""One rank of test_pipeline_links (run as a script, not collected).

usage: links_rank.py RANK PORT OUT.json

A real two-rank gloo pipeline (stage 0 -> stage 1). Rank 0 forwards three RUN messages and
then tells rank 1, through the store, that its forward calls have returned; rank 1 posts no
receive until then (a blocking send would wait forever: the store's wait times out). Rank 1
then receives the three in order, and a PING, which rank 0 sends only after the queued RUNs.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from statmux.runtime.pipeline import Links, Message, Op, Topology


def main() -> None:
    rank, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=rank == 0, timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    links = Links(Topology(2, 1, rank), torch.device("cpu"), None, None)
    result: dict[str, object] = {}
    if rank == 0:
        sent: list[int] = []
        for i in range(3):
            msg = Message(Op.RUN, i + 1, 0, [torch.full((1, 4), float(i))])
            links.forward(msg, sent.append)
        store.set("forwarded", "1")  # every forward returned before rank 1 received anything
        links.forward(Message(Op.PING))  # control: waits for the queued RUNs, then inline
        links.flush()
        result["sent_callbacks"] = len(sent)
    else:
        store.wait(["forwarded"], timedelta(seconds=30))
        got = [links.receive_work() for _ in range(4)]
        result["ops"] = [int(m.op) for m in got]
        result["batches"] = [m.batch_id for m in got]
        result["values"] = [m.tensors[0].tolist() if m.tensors else None for m in got]
    dist.barrier()
    dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
