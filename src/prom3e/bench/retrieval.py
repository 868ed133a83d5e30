"""Exact top-k retrieval over a large gallery: queries/s and recall@10 on planted neighbours."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from prom3e.bench.timing import free


def exact_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int = 10, chunk: int = 131072,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner-product neighbours, scanning the gallery in chunks (bounded memory)."""
    q = queries.to(dtype)
    best_s = torch.full((len(q), k), float("-inf"))
    best_i = torch.zeros(len(q), k, dtype=torch.long)
    for start in range(0, len(gallery), chunk):
        g = gallery[start:start + chunk].to(dtype)
        s, i = (q @ g.T).float().topk(min(k, len(g)), dim=1)
        s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i + start], 1)
        best_s, pick = s.topk(k, dim=1)
        best_i = i.gather(1, pick)
    return best_s, best_i


def bench_retrieval(sizes: tuple[int, ...] = (100_000, 1_000_000), dim: int = 512, n_queries: int = 1000,
                    k: int = 10, noise: float = 0.3, seed: int = 0) -> dict:
    """Random unit gallery; each query is a noisy copy of a known gallery row (its true neighbour)."""
    res: dict = {"benchmark": "retrieval", "dim": dim, "queries": n_queries, "k": k,
                 "threads": torch.get_num_threads(), "results": {}}
    for n in sizes:
        g = torch.Generator().manual_seed(seed)
        gallery = torch.empty(n, dim)
        for s in range(0, n, 100_000):  # fill in place: no second full-size copy
            gallery[s:s + 100_000] = F.normalize(torch.randn(min(100_000, n - s), dim, generator=g), dim=-1)
        truth = torch.randint(0, n, (n_queries,), generator=g)
        queries = F.normalize(gallery[truth] + noise * torch.randn(n_queries, dim, generator=g) / dim**0.5, dim=-1)
        for name, dt in (("exact_fp32", torch.float32), ("exact_bf16", torch.bfloat16)):
            exact_topk(queries[:32], gallery[:200_000], k, dtype=dt)  # warm-up
            t = time.perf_counter()
            _, idx = exact_topk(queries, gallery, k, dtype=dt)
            sec = time.perf_counter() - t
            recall = (idx == truth[:, None]).any(1).float().mean().item()
            res["results"][f"{n}/{name}"] = {"queries_per_s": n_queries / sec, "recall_at_10": recall,
                                             "gallery_gb": gallery.numel() * 4 / 1e9}
        del gallery, queries
        free()
    first = next(iter(res["results"].values()))
    res["queries_per_s"], res["recall_at_10"] = first["queries_per_s"], first["recall_at_10"]
    return res
