"""Training-step benchmark: ours (each precision) vs the reference structure, in one run."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from prom3e.data.masking import sample_visible, training_targets
from prom3e.models.prom3e import CONFIGS, Prom3e, named_config
from prom3e.perf import flops
from prom3e.perf.reference import RefProm3e, reference_visible
from prom3e.perf.timing import interleaved, matmul_gflops, median, peak_rss_mb
from prom3e.train.loop import TrainConfig, make_optimizer, training_step

VISIBLE_PROBS = (0.9, 0.1)


def synthetic_batches(n_batches: int, batch: int, n_mod: int, dim: int, seed: int = 0) -> list[torch.Tensor]:
    """Random unit embeddings ``[B, M, D]``, every modality present (the paper's all-paired data)."""
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(batch, n_mod, dim, generator=g), dim=-1) for _ in range(n_batches)]


def ours_step(config: str, batch: int, precision: str, n_mod: int = 6, dim: int = 512,
              seed: int = 0) -> tuple[Callable[[], None], Prom3e]:
    """A closure running one full training step of our model (the training loop's own step)."""
    torch.manual_seed(seed)
    mods = [f"m{i}" for i in range(n_mod)]
    model = Prom3e(named_config(config, mods, [dim] * n_mod)).train()
    cfg = TrainConfig(model=config, batch_size=batch, precision=precision)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    data = []
    for x in synthetic_batches(2, batch, n_mod, dim, seed):
        present = torch.ones(batch, n_mod, dtype=torch.bool)
        vis = sample_visible(present, VISIBLE_PROBS, gen)
        data.append((x, vis, training_targets(present, vis)))
    cycle = itertools.cycle(data)
    device = torch.device("cpu")

    def step() -> None:
        x, vis, tgt = next(cycle)
        training_step(model, opt, x, vis, tgt, None, cfg, device, precision)

    return step, model


def reference_step(config: str, batch: int, precision: str = "fp32", n_mod: int = 6, dim: int = 512,
                   seed: int = 0) -> tuple[Callable[[], None], RefProm3e]:
    """A closure running one training step of the reference structure (fp32 unless told)."""
    torch.manual_seed(seed)
    c = CONFIGS[config]
    model = RefProm3e(n_mod, dim, c["embed_dim"], c["depth"], c["heads"], c["mlp_dim"], c["registers"]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    gen = torch.Generator().manual_seed(seed)
    data = [([x[:, m] for m in range(n_mod)], reference_visible(n_mod, VISIBLE_PROBS, gen))
            for x in synthetic_batches(2, batch, n_mod, dim, seed)]
    cycle = itertools.cycle(data)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else None

    def step() -> None:
        xs, vis = next(cycle)
        if ctx is None:
            loss = model(xs, vis)
        else:
            with ctx():
                loss = model(xs, vis)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, model


def shape_of(config: str, batch: int, n_mod: int = 6, dim: int = 512) -> flops.Shape:
    c = CONFIGS[config]
    v = sum((i + 1) * p for i, p in enumerate(VISIBLE_PROBS))
    return flops.Shape(n_mod=n_mod, in_dim=dim, embed_dim=c["embed_dim"], mlp_dim=c["mlp_dim"], depth=c["depth"],
                       registers=c["registers"], batch=batch, visible=v)


def bench_train(config: str = "paper", batch: int = 1024, precisions: tuple[str, ...] = ("bf16", "fp32"),
                reference: tuple[str, ...] = ("fp32",), repeats: int = 5, warmup: int = 1) -> dict:
    """Samples/s of full training steps, ours vs reference, interleaved; FLOPs and matmul fractions."""
    from prom3e.runtime import resolve_precision

    default = resolve_precision("auto", torch.device("cpu"))
    fns: dict[str, Callable[[], None]] = {}
    for p in precisions:
        fns[f"ours_{p}"] = ours_step(config, batch, p)[0]
    for p in reference:
        fns[f"reference_{p}"] = reference_step(config, batch, p)[0]
    rates = {"fp32": matmul_gflops(torch.float32)}
    if "bf16" in precisions or "bf16" in reference:
        rates["bf16"] = matmul_gflops(torch.bfloat16)
    times = interleaved(fns, repeats, warmup)
    rates_after = {"fp32": matmul_gflops(torch.float32)}
    if "bf16" in rates:
        rates_after["bf16"] = matmul_gflops(torch.bfloat16)
    rates = {k: (v + rates_after[k]) / 2 for k, v in rates.items()}  # bracket the run
    shape = shape_of(config, batch)
    f_ours, f_ref = flops.train_flops(flops.ours_forward(shape)), flops.train_flops(flops.reference_forward(shape))
    res: dict = {"benchmark": "train", "config": config, "batch": batch, "threads": torch.get_num_threads(),
                 "default_precision": default, "repeats": repeats, "matmul_gflops": rates, "variants": {}}
    for name, ts in times.items():
        prec = name.rsplit("_", 1)[1]
        fl = f_ours if name.startswith("ours") else f_ref
        sps = batch / median(ts)
        res["variants"][name] = {"samples_per_s": sps, "step_s": median(ts), "precision": prec,
                                 "flops_per_sample": fl, "achieved_gflops": sps * fl / 1e9,
                                 "fraction_of_matmul": sps * fl / 1e9 / rates[prec]}
    main = res["variants"].get(f"ours_{default}") or next(iter(res["variants"].values()))
    ref = res["variants"].get("reference_fp32")
    res.update(samples_per_s=main["samples_per_s"], precision=main["precision"],
               flops_per_sample=main["flops_per_sample"], fraction_of_matmul=main["fraction_of_matmul"],
               reference_flops_per_sample=f_ref, peak_rss_mb=peak_rss_mb())
    if ref:
        res["speedup_vs_reference_fp32"] = {k: v["samples_per_s"] / ref["samples_per_s"]
                                            for k, v in res["variants"].items()}
    # the headline matmul rate is the one of the headline precision
    res["matmul_gflops_main"] = rates[main["precision"]]
    return res
