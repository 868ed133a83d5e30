"""Synthetic ecology data with real structure: an aligned table as stage 1 would write it.

The generative story:

1. **Taxonomy.** Two kingdoms (Plantae, Animalia) branch into phyla, classes, orders,
   families, genera and ``n_species`` species. Each node has a latent vector: child =
   parent + smaller noise, so genus-mates are closer than strangers.
2. **Ranges.** Each species prefers an environment and lives in 1-3 Gaussian blobs on
   the sphere, centred where the environment suits it; ranges ignore the taxonomy, so
   location tells apart species that look alike. Species frequency is Zipf-like.
3. **Observations.** Pick a species, a point of its range, a day near its peak season.
4. **Embeddings**, all in one ``dim``-D space (roughly aligned, as after stage 1):
   ``image`` = species latent + viewpoint noise (+ a little habitat); ``text`` = one fixed
   vector per species; ``sound`` = noisier species view, animals only; ``loc`` and ``env``
   = smooth functions of (lat, lon) (random Fourier features; env is smoother), mixed
   with the expected species latent at that place; ``sat`` = one vector per grid cell,
   shared by every observation in it; extra names ``m<k>`` = noisy species views. Each
   modality then goes through its own fixed near-identity linear map and offset (the
   modality gap), and is normalised to unit length.
   ``resolution`` makes a species view deliberately ambiguous: ``{"m2": "genus"}`` builds
   ``m2`` from the genus latent, one value shared by every species of the genus, so seeing
   ``m2`` leaves a known number of candidate species (the node's size): a ground truth for
   how uncertain a posterior given that modality should be.
5. **Missingness.** Each modality is missing with probability ``missing_rate`` (sound
   always for plants); ``always_present`` modalities are kept, and every row keeps one.

Same seed, same config: byte-identical table. Taxonomy, ranges and rows do not depend on
which modalities are asked for. :func:`generate_parts` builds a larger table part by part
(memory: one part) in the same world.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import ClassVar

import numpy as np
import pyarrow as pa

from prom3e.config import Options
from prom3e.data.table import ModalTable, from_arrow, vectors_to_arrow
from prom3e.errors import Prom3eError

KNOWN = ("image", "sat", "loc", "env", "text", "sound")
ANIMALIA = 1  # kingdom index; kingdom 0 is Plantae
LEVELS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
_LEVEL_SCALE = (1.0, 0.6, 0.5, 0.4, 0.3, 0.2, 0.12)  # latent noise added at each level
_NOISE = {"image": 0.7, "text": 0.3, "sound": 0.9, "loc": 0.15, "env": 0.15, "sat": 0.3}
_GENERIC = re.compile(r"m\d+")


@dataclass
class SynthConfig(Options):
    """What to generate.

    ``noise`` scales every noise level (1 = default difficulty); ``always_present`` names
    modalities never dropped (empty: one random modality per row is kept); ``cell_deg`` is
    the satellite grid-cell size in degrees; ``zipf`` the exponent of species frequency.
    """

    n: int = 20000
    dim: int = 64
    n_species: int = 100
    modalities: tuple[str, ...] = KNOWN
    missing_rate: float = 0.3
    noise: float = 1.0
    seed: int = 0
    always_present: tuple[str, ...] = ("image",)
    cell_deg: float = 3.0
    zipf: float = 0.8
    # modality → taxonomic level it resolves ("genus", "family", …); species views only
    # (image, text, sound, m<k>); unnamed ones resolve the species
    resolution: dict[str, str] = field(default_factory=dict)

    WHAT: ClassVar[str] = "synthetic-data option"
    BOUNDS: ClassVar[dict[str, str]] = {"n": ">= 1", "dim": ">= 4", "n_species": ">= 2", "missing_rate": "[0, 1)",
                                        "noise": ">= 0", "seed": ">= 0", "cell_deg": "(0, 90]", "zipf": ">= 0"}

    def check(self) -> None:
        mods = tuple(self.modalities)
        if not 2 <= len(mods) <= 16:
            raise Prom3eError(f"give 2 to 16 modalities, got {len(mods)}")
        if len(set(mods)) != len(mods):
            raise Prom3eError(f"duplicate modality names in {', '.join(mods)}")
        for m in mods:
            if m not in KNOWN and not _GENERIC.fullmatch(m):
                raise Prom3eError(
                    f"unknown modality '{m}' (known: {', '.join(KNOWN)}, or m<k> e.g. m7)"
                )
        for m in self.always_present:
            if m not in mods:
                raise Prom3eError(f"always_present '{m}' is not among the modalities")
        for m, level in self.resolution.items():
            if m not in mods or m in ("loc", "env", "sat"):
                raise Prom3eError(f"resolution: '{m}' is not a species view among the modalities "
                                  f"(image, text, sound, m<k>)")
            if level not in LEVELS:
                raise Prom3eError(f"resolution: unknown level '{level}' for '{m}' (have: {', '.join(LEVELS)})")


def _rng(seed: int, key: str) -> np.random.Generator:
    """An independent stream per component, so components do not shift one another."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _sphere(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], -1)


def _taxonomy(s: int, dim: int, rng: np.random.Generator):
    """Parent index per level, node latents per level, names per level (species last)."""
    counts = [2]
    for lev in range(1, len(LEVELS)):
        c = round(2 * (s / 2) ** (lev / (len(LEVELS) - 1)))
        counts.append(min(s, max(counts[-1], c)))
    counts[-1] = s
    parents, lat = [], [rng.normal(0, _LEVEL_SCALE[0] / np.sqrt(dim), (2, dim))]
    for lev in range(1, len(LEVELS)):
        n_par, n = counts[lev - 1], counts[lev]
        # every parent gets one child, the rest are spread at random; sorted = contiguous
        par = np.sort(np.concatenate([np.arange(n_par), rng.integers(0, n_par, n - n_par)]))
        parents.append(par)
        lat.append(lat[-1][par] + rng.normal(0, _LEVEL_SCALE[lev] / np.sqrt(dim), (n, dim)))
    names = [np.array(["Plantae", "Animalia"])]
    for lev in range(1, len(LEVELS) - 1):
        names.append(np.array([f"{LEVELS[lev].capitalize()}{i + 1}" for i in range(counts[lev])]))
    par = parents[-1]
    rank = np.arange(s) - np.searchsorted(par, par)  # index of each species within its genus
    genus = names[-1]
    names.append(np.array([f"{genus[par[i]]} species{rank[i] + 1}" for i in range(s)]))
    return parents, lat, names


class _Field:
    """A smooth random map sphere → R^dim (random Fourier features, fixed projection)."""

    def __init__(self, rng: np.random.Generator, dim: int, freq: float, n_feat: int = 128):
        self.w = rng.normal(0, freq, (3, n_feat)).astype(np.float32)
        self.b = rng.uniform(0, 2 * np.pi, n_feat).astype(np.float32)
        self.q = rng.normal(0, 2 / np.sqrt(n_feat), (n_feat, dim)).astype(np.float32)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        h = np.cos(p.astype(np.float32) @ self.w + self.b) @ self.q
        return _unit(np.tanh(h, out=h).astype(np.float64))


class _World:
    """What every row shares: taxonomy, fields, species ranges and seasons (from the seed)."""

    def __init__(self, cfg: SynthConfig) -> None:
        self.cfg = cfg
        d, s = cfg.dim, cfg.n_species
        self.parents, lat, self.names = _taxonomy(s, d, _rng(cfg.seed, "taxonomy"))
        self.lat = [_unit(x) for x in lat]  # node latents per level
        self.z = self.lat[-1]  # species latents
        self.env_field = _Field(_rng(cfg.seed, "env_field"), d, freq=1.5)
        self.loc_field = _Field(_rng(cfg.seed, "loc_field"), d, freq=4.0)
        # ranges: 1-3 blobs per species, centred on the best of 64 candidate spots for its taste
        r = _rng(cfg.seed, "ranges")
        pref = _unit(r.normal(size=(s, d)))
        cand = _unit(r.normal(size=(s, 64, 3)))
        score = np.einsum("skd,sd->sk", self.env_field(cand.reshape(-1, 3)).reshape(s, 64, d), pref)
        self.centers = np.take_along_axis(cand, np.argsort(-score, 1)[:, :3, None], 1)  # (s, 3, 3)
        self.n_blobs = r.integers(1, 4, s)
        logw = np.where(np.arange(3) < self.n_blobs[:, None], 0.0, -np.inf) - np.log(self.n_blobs)[:, None]
        self.sigma = np.radians(r.uniform(3, 12, (s, 3)))
        freq = 1.0 / (1.0 + r.permutation(s)) ** cfg.zipf
        self.freq = freq / freq.sum()
        self.peak, self.spread = r.uniform(0, 365, s), r.uniform(20, 60, s)
        kappa = 1.0 / self.sigma**2
        self.c32 = self.centers.reshape(-1, 3).astype(np.float32)
        self.kappa32 = kappa.reshape(-1).astype(np.float32)
        self.bias = (np.log(kappa) - kappa + logw + np.log(self.freq)[:, None]).reshape(-1).astype(np.float32)

    def mixture(self, q: np.ndarray) -> np.ndarray:
        """Expected species latent at each point (what a stage-1 aligned geo encoder learns):
        sum over species of p(species | location) * latent, with vMF-like range blobs."""
        lg = q.astype(np.float32) @ self.c32.T
        lg *= self.kappa32
        lg += self.bias
        lg -= lg.max(1, keepdims=True)
        w = np.exp(np.maximum(lg, -50.0, out=lg), out=lg)
        return _unit(w.reshape(len(q), self.cfg.n_species, 3).sum(-1, dtype=np.float64) @ self.z)

    def sat_content(self, cp: np.ndarray) -> np.ndarray:
        """A satellite tile's content at grid-cell centres ``cp``."""
        return 0.5 * self.mixture(cp) + self.env_field(cp) + 0.5 * self.loc_field(cp)

    def rows(self, n: int, r: np.random.Generator, first_id: int = 0) -> tuple[dict[str, pa.Array], dict]:
        """``n`` observations drawn with ``r``: metadata columns and what the embeddings need."""
        cfg, s = self.cfg, self.cfg.n_species
        sp = r.choice(s, n, p=self.freq)
        blob = (r.random(n) * self.n_blobs[sp]).astype(np.int64)
        p = _unit(self.centers[sp, blob] + r.normal(size=(n, 3)) * self.sigma[sp, blob][:, None])
        la = np.degrees(np.arcsin(np.clip(p[:, 2], -1, 1)))
        lo = np.degrees(np.arctan2(p[:, 1], p[:, 0]))
        day = (np.floor(self.peak[sp] + r.normal(0, 1, n) * self.spread[sp]) % 365 + 1).astype(np.int16)
        g, n_cols = cfg.cell_deg, int(np.ceil(360 / cfg.cell_deg))  # satellite grid cells
        row = np.minimum(np.floor((la + 90) / g), np.ceil(180 / g) - 1)
        cell = (row * n_cols + np.minimum(np.floor((lo + 180) / g), n_cols - 1)).astype(np.int64)
        anc = [sp]  # ancestor index at each level, species first
        for par in reversed(self.parents):
            anc.append(par[anc[-1]])
        columns: dict[str, pa.Array] = {"id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64))}
        for lev, idx in zip(LEVELS, reversed(anc), strict=True):
            columns[lev] = pa.array(self.names[LEVELS.index(lev)][idx])
        columns |= {"lat": pa.array(la), "lon": pa.array(lo), "day_of_year": pa.array(day),
                    "cell": pa.array(cell)}
        return columns, {"sp": sp, "p": p, "cell": cell, "n_cols": n_cols, "kingdom": anc[-1], "anc": anc}

    def distortion(self, m: str) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """The modality's own fixed near-identity map and offset (the modality gap), and its
        random stream positioned after them."""
        d = self.cfg.dim
        r = _rng(self.cfg.seed, "modality:" + m)
        a = np.eye(d) + r.normal(0, 0.3 / np.sqrt(d), (d, d))
        offset = 0.3 * _unit(r.normal(size=d))
        return a, offset, r

    def embed(self, m: str, obs: dict, r: np.random.Generator, at_p, sat=None) -> np.ndarray:
        """Modality ``m`` of the observations; noise from ``r``. ``sat``: (cell content, the
        rows' index into it) when tiles are shared beyond these rows."""
        cfg, sp = self.cfg, obs["sp"]
        n, d = len(sp), cfg.dim
        a, offset, r0 = self.distortion(m)
        r = r0 if r is None else r
        sd = _NOISE.get(m, 0.9) * cfg.noise / np.sqrt(d)
        lev = LEVELS.index(cfg.resolution.get(m, "species"))
        zm, node = self.lat[lev], obs["anc"][len(LEVELS) - 1 - lev]  # the latent the view resolves
        if m == "image":
            x = zm[node] + 0.2 * at_p("env") + r.normal(0, sd, (n, d))
        elif m == "text":
            x = (zm + r0.normal(0, sd, zm.shape))[node]  # one vector per node: from the fixed stream
        elif m == "loc":
            x = 0.6 * at_p("mix") + at_p("loc") + r.normal(0, sd, (n, d))
        elif m == "env":
            x = 0.4 * at_p("mix") + at_p("env") + r.normal(0, sd, (n, d))
        elif m == "sat":
            if sat is None:
                n_cols, g = obs["n_cols"], cfg.cell_deg
                cells, cell_inv = np.unique(obs["cell"], return_inverse=True)
                cp = _sphere((cells // n_cols + 0.5) * g - 90, (cells % n_cols + 0.5) * g - 180)  # centres
                x = (self.sat_content(cp) + r.normal(0, sd, (len(cp), d)))[cell_inv]
            else:
                x = sat[obs["cell"]]
        else:  # sound and generic views m<k>
            x = zm[node] + r.normal(0, sd, (n, d))
        return _unit(_unit(x) @ a + offset).astype(np.float32)

    def missing(self, obs: dict, r: np.random.Generator) -> np.ndarray:
        """``present[n, M]`` under the missingness rules."""
        cfg, mods = self.cfg, tuple(self.cfg.modalities)
        n = len(obs["sp"])
        present = r.random((n, len(mods))) >= cfg.missing_rate
        for j, m in enumerate(mods):
            if m in cfg.always_present:
                present[:, j] = True
        possible = np.ones((n, len(mods)), bool)
        if "sound" in mods:
            possible[:, mods.index("sound")] = obs["kingdom"] == ANIMALIA
        present &= possible
        empty = ~present.any(1)
        pick = np.argmax(r.random((n, len(mods))) * possible, 1)  # a random possible modality
        present[empty, pick[empty]] = True
        lone = np.flatnonzero(~present.any(0) & possible.any(0))  # tiny n: no column left empty
        present[possible[:, lone].argmax(0), lone] = True
        return present


def _table(w: _World, columns: dict, obs: dict, present: np.ndarray, noise, sat=None) -> pa.Table:
    """Embeddings (content at the observation points computed once, and only if needed)."""
    p = obs["p"]

    @cache
    def at_p(key: str) -> np.ndarray:
        return {"mix": w.mixture, "env": w.env_field, "loc": w.loc_field}[key](p)

    for j, m in enumerate(w.cfg.modalities):
        columns[m] = vectors_to_arrow(w.embed(m, obs, noise(m), at_p, sat), present[:, j])
    return pa.table(columns)


def generate(cfg: SynthConfig | None = None) -> pa.Table:
    """Generate the table: metadata columns, then one ``list<float32>`` column per modality."""
    cfg = cfg or SynthConfig()
    cfg.validate()
    w = _World(cfg)
    columns, obs = w.rows(cfg.n, _rng(cfg.seed, "rows"))
    present = w.missing(obs, _rng(cfg.seed, "missing"))
    return _table(w, columns, obs, present, lambda m: None)


def generate_parts(cfg: SynthConfig, part_rows: int) -> Iterator[tuple[int, Callable[[], pa.Table]]]:
    """The table as parts of ``part_rows`` rows, each generated on its own (memory: one part):
    ``(first row, make)`` pairs, where ``make()`` builds that part.

    Same world as :func:`generate` with the same config (taxonomy, ranges, modality maps,
    species texts); rows, noise and missingness come from a random stream per part, and a
    satellite tile is one vector per grid cell shared by every part. So the parts are not
    the rows of the one-file table, but are the same for the same config and ``part_rows``.
    """
    cfg.validate()
    if part_rows < 1:
        raise Prom3eError(f"part rows must be ≥ 1, got {part_rows}")
    w = _World(cfg)
    sat = None
    if "sat" in cfg.modalities:
        g, n_cols = cfg.cell_deg, int(np.ceil(360 / cfg.cell_deg))
        cells = np.arange(int(np.ceil(180 / g)) * n_cols)
        cp = _sphere((cells // n_cols + 0.5) * g - 90, (cells % n_cols + 0.5) * g - 180)
        sd = _NOISE["sat"] * cfg.noise / np.sqrt(cfg.dim)
        sat = w.sat_content(cp) + _rng(cfg.seed, "sat_cells").normal(0, sd, (len(cp), cfg.dim))

    def make(k: int, first: int, n: int) -> pa.Table:
        columns, obs = w.rows(n, _rng(cfg.seed, f"rows:{k}"), first_id=first)
        present = w.missing(obs, _rng(cfg.seed, f"missing:{k}"))
        return _table(w, columns, obs, present, lambda m: _rng(cfg.seed, f"modality:{m}:{k}"), sat)

    for k, first in enumerate(range(0, cfg.n, part_rows)):
        n = min(part_rows, cfg.n - first)
        yield first, (lambda k=k, first=first, n=n: make(k, first, n))


def generate_table(cfg: SynthConfig | None = None) -> ModalTable:
    """:func:`generate`, validated and converted to a :class:`ModalTable`."""
    return from_arrow(generate(cfg or SynthConfig()), source="<synthetic>")
