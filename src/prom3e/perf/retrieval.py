"""Top-k retrieval over a large gallery: queries/s and recall@10 on planted neighbours, exact
(torch, fp32 and bf16) and, where faiss is installed, approximate indexes (build time too)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from prom3e.index import gallery as index_module
from prom3e.index.gallery import GalleryIndex, exact_topk
from prom3e.perf.timing import free


def approximate_specs(n: int, dim: int = 512) -> list[tuple[str, tuple[str, ...]]]:
    """faiss indexes timed at gallery size ``n``: (index_factory string, search parameters to try)."""
    nlist = 1024 if n >= 500_000 else 256
    specs = [(f"IVF{nlist},Flat", ("nprobe=8", "nprobe=32")),
             (f"IVF{nlist},PQ{max(1, dim // 8)}", ("nprobe=8", "nprobe=32"))]  # 512-d: 64 bytes a vector, not 2 kB
    if n <= 200_000:  # graph construction at 1M × 512 takes many minutes on 2 cores
        specs.append(("HNSW32", ("efSearch=64", "efSearch=256")))
    return specs


def bench_retrieval(sizes: tuple[int, ...] = (100_000, 1_000_000), dim: int = 512, n_queries: int = 1000,
                    k: int = 10, noise: float = 0.3, seed: int = 0, approximate: bool = True) -> dict:
    """Random unit gallery; each query is a noisy copy of a known gallery row (its true neighbour).

    ``recall_at_10``: the planted row is among the 10 returned; ``overlap_at_10``: the share of
    the exact fp32 top 10 returned (the usual ANN recall)."""
    res: dict = {"benchmark": "retrieval", "dim": dim, "queries": n_queries, "query_batch": n_queries, "k": k,
                 "threads": torch.get_num_threads(), "precision": "fp32 (faiss, exact_fp32), bf16 (exact_bf16)",
                 "results": {}}
    approximate = approximate and index_module.faiss_available()
    if not approximate:
        res["note"] = "approximate indexes not timed (faiss not installed or disabled)"
    for n in sizes:
        g = torch.Generator().manual_seed(seed)
        gallery = torch.empty(n, dim)
        for s in range(0, n, 100_000):  # fill in place: no second full-size copy
            gallery[s:s + 100_000] = F.normalize(torch.randn(min(100_000, n - s), dim, generator=g), dim=-1)
        truth = torch.randint(0, n, (n_queries,), generator=g)
        queries = F.normalize(gallery[truth] + noise * torch.randn(n_queries, dim, generator=g) / dim**0.5, dim=-1)
        exact_ids = None
        for name, dt in (("exact_fp32", torch.float32), ("exact_bf16", torch.bfloat16)):
            exact_topk(queries[:32], gallery[:200_000], k, dtype=dt)  # warm-up
            t = time.perf_counter()
            _, idx = exact_topk(queries, gallery, k, dtype=dt)
            sec = time.perf_counter() - t
            exact_ids = idx if exact_ids is None else exact_ids
            res["results"][f"{n}/{name}"] = _row(idx, truth, exact_ids, n_queries / sec, gallery)
        for spec, tries in approximate_specs(n, dim) if approximate else []:
            t = time.perf_counter()
            index = GalleryIndex.build(gallery, spec, seed=seed)
            build = time.perf_counter() - t
            size_mb = index.nbytes() / 1e6
            for params in tries:
                index.set_params(params)
                index.search(queries[:32], k)  # warm-up
                t = time.perf_counter()
                _, idx = index.search(queries, k)
                sec = time.perf_counter() - t
                row = _row(idx, truth, exact_ids, n_queries / sec, gallery)
                res["results"][f"{n}/faiss {spec} {params}"] = {**row, "build_s": build, "index_mb": size_mb}
            del index
            free()
        del gallery, queries
        free()
    first = next(iter(res["results"].values()))
    res["queries_per_s"], res["recall_at_10"] = first["queries_per_s"], first["recall_at_10"]
    return res


def _row(idx: torch.Tensor, truth: torch.Tensor, exact_ids: torch.Tensor, qps: float, gallery: torch.Tensor) -> dict:
    overlap = (idx[:, :, None] == exact_ids[:, None, :]).any(2).float().mean().item()
    return {"queries_per_s": qps, "recall_at_10": (idx == truth[:, None]).any(1).float().mean().item(),
            "overlap_at_10": overlap, "gallery_gb": gallery.numel() * 4 / 1e9,
            "index_mb": gallery.numel() * gallery.element_size() / 1e6}
