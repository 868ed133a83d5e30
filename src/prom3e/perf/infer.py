"""Encode / reconstruct benchmark through the public :class:`Fuser` API vs the reference structure."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from prom3e.models.prom3e import CONFIGS, Prom3e, named_config
from prom3e.perf.reference import RefProm3e
from prom3e.perf.timing import interleaved, median
from prom3e.perf.train import synthetic_batches
from prom3e.runtime import resolve_precision


@torch.no_grad()
def reference_reconstruct(model: RefProm3e, xs: list[torch.Tensor], visible: list[int], n: int) -> list[torch.Tensor]:
    """The reference's inference: encode, draw n samples, decode *all* modalities, average."""
    mu, logvar = model.encode(xs, visible)
    outs = [model.decode(mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape[0], 1)) for _ in range(n)]
    return [F.normalize(torch.stack(o).mean(0), dim=-1) for o in zip(*outs, strict=True)]


def _variants(fusers: dict, ref: RefProm3e, x: torch.Tensor, present: torch.Tensor, xs: list[torch.Tensor],
              mods: list[str], k: int, n_samples: tuple[int, ...], batch: int) -> dict[str, Callable[[], object]]:
    """The timed calls for ``k`` visible modalities (the first k; targets: the others)."""
    vis_names, vis_idx, others = mods[:k], list(range(k)), mods[k:]
    fns: dict[str, Callable[[], object]] = {}
    for p, fz in fusers.items():
        fns[f"encode/ours_{p}"] = lambda fz=fz: fz.encode((x, present), visible=vis_names, batch_size=batch)
    fns["encode/reference_fp32"] = lambda: torch.no_grad()(ref.encode)(xs, vis_idx)
    for n in n_samples:
        for p, fz in fusers.items():
            fns[f"reconstruct_n{n}_1target/ours_{p}"] = lambda fz=fz, n=n: fz.reconstruct(
                (x, present), targets=others[:1], visible=vis_names, n_samples=n, batch_size=batch)
            fns[f"reconstruct_n{n}_all/ours_{p}"] = lambda fz=fz, n=n: fz.reconstruct(
                (x, present), targets=others, visible=vis_names, n_samples=n, batch_size=batch)
        fns[f"reconstruct_n{n}/reference_fp32"] = lambda n=n: reference_reconstruct(ref, xs, vis_idx, n)
    return fns


def bench_infer(config: str = "paper", batch: int = 1024, repeats: int = 3, n_visible: tuple[int, ...] = (1, 2),
                n_samples: tuple[int, ...] = (1, 10), precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    """Samples/s of encode and reconstruct (one target; all non-visible targets), ours vs reference fp32."""
    from prom3e.api import Fuser

    n_mod, dim = 6, 512
    torch.manual_seed(0)
    mods = [f"m{i}" for i in range(n_mod)]
    ours = Prom3e(named_config(config, mods, [dim] * n_mod)).eval()
    fusers = {p: Fuser(ours, "cpu", p) for p in precisions}
    c = CONFIGS[config]
    ref = RefProm3e(n_mod, dim, c["embed_dim"], c["depth"], c["heads"], c["mlp_dim"], c["registers"]).eval()
    x = synthetic_batches(1, batch, n_mod, dim)[0]
    present = torch.ones(batch, n_mod, dtype=torch.bool)
    xs = [x[:, m].contiguous() for m in range(n_mod)]
    res: dict = {"benchmark": "encode/reconstruct", "config": config, "batch": batch,
                 "threads": torch.get_num_threads(), "repeats": repeats, "results": {}}
    for k in n_visible:
        fns = _variants(fusers, ref, x, present, xs, mods, k, n_samples, batch)
        times = interleaved(fns, repeats, warmup=1)
        out = {name: batch / median(t) for name, t in times.items()}
        for name in list(out):
            task, variant = name.split("/")
            if variant.startswith("ours"):
                ref_task = task.replace("_1target", "").replace("_all", "")
                out[f"{name}:x_reference"] = out[name] / out[f"{ref_task}/reference_fp32"]
        res["results"][f"visible{k}"] = out
    default = resolve_precision("auto", torch.device("cpu"))
    head = default if default in precisions else precisions[0]
    r1 = res["results"][f"visible{n_visible[0]}"]
    res["precision"] = head  # the headline figures: the default precision where it was timed
    res["samples_per_s"] = r1[f"encode/ours_{head}"]
    res["encode_x_reference"] = r1[f"encode/ours_{head}:x_reference"]
    worst = min(((v, f"{k}/{name}") for k, r in res["results"].items() for name, v in r.items()
                 if name.endswith(f"ours_{head}:x_reference")), default=(float("nan"), ""))
    res["min_x_reference"], res["min_x_reference_case"] = worst
    return res
