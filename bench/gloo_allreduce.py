"""Reference for bench/allreduce.sh: torch.distributed all-reduce bandwidth
with the gloo backend on CPU tensors, N local processes, same sizes and
timing method as `ride-bench allreduce` (barrier, then time one
all-reduce; median of the timed runs). Prints one JSON line per size."""
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def rank_main(rank, world, port, sizes, warmup, iters):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for nbytes in sizes:
        t = torch.ones(nbytes // 4, dtype=torch.float32)
        times = []
        for i in range(warmup + iters):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(t)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        times.sort()
        med = times[len(times) // 2]
        algbw = nbytes / med / 1e9
        if rank == 0:
            print(json.dumps({"world": world, "bytes": nbytes, "median_s": med,
                              "algbw_gbps": algbw,
                              "busbw_gbps": algbw * 2 * (world - 1) / world}), flush=True)
    dist.destroy_process_group()


def main():
    world = int(sys.argv[1])
    sizes = [int(float(mb) * 1e6) // 4 * 4 for mb in sys.argv[2].split(",")]
    warmup, iters = int(sys.argv[3]), int(sys.argv[4])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(world, port, sizes, warmup, iters), nprocs=world)


if __name__ == "__main__":
    main()
