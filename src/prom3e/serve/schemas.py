"""Request and response models of the HTTP API (they are also its OpenAPI document).

A row maps modality names to a vector (list of numbers), a raw input where the modality
has one (``[lat, lon]``, text, a ``YYYY-MM-DD`` date) or ``null``; the row's *visible*
modalities are its non-null ones. Row contents are validated by
:class:`prom3e.serve.inputs.RowParser`, which names the field of any problem.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Row = dict[str, Any]
ROW_EXAMPLE = {"image": [0.1, 0.2, "…"], "loc": [36.97, -122.06], "text": None}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[Row] = Field(..., description="one object per query: {modality: vector | raw input | null}",
                            examples=[[ROW_EXAMPLE]])


class EncodeRequest(_Request):
    return_logvar: bool = Field(False, description="also return logσ² per row")
    subsets: bool = Field(False, description="also return ‖σ‖₁ for every non-empty subset of each row's "
                          "visible modalities")


class ReconstructRequest(_Request):
    targets: list[str] | None = Field(None, description="modalities to reconstruct (default: all)")
    n_samples: int = Field(0, ge=0, le=256, description="0 decodes μ; n > 0 averages n seeded posterior draws")
    seed: int = Field(0, description="seed of the draws")
    return_spread: bool = Field(False, description="per target, mean 1 − cos(draw, mean) over the draws "
                                "(needs n_samples ≥ 2)")


class RetrieveRequest(_Request):
    target: str = Field(..., description="the gallery's modality")
    k: int = Field(10, ge=1, le=1000)
    delta: float = Field(1.0, ge=0, le=1, description="modality inversion: query = (1 − δ)·mean of the "
                         "visible vectors + δ·reconstruction of the target (δ = 1 where dims differ)")


class ClassifyRequest(_Request):
    k: int = Field(5, ge=1, le=1000, description="labels per row")
    delta: float = Field(1.0, ge=0, le=1, description="as in /retrieve, towards the class modality")


class NextModalityRequest(_Request):
    pass


class EncodeResult(BaseModel):
    visible: list[str]
    mu: list[float]
    sigma_l1: float
    logvar: list[float] | None = None
    subsets: list[dict[str, Any]] | None = Field(None, description="[{visible, sigma_l1}]")


class ReconstructResult(BaseModel):
    visible: list[str]
    sigma_l1: float
    reconstructions: dict[str, list[float]]
    spread: dict[str, float] | None = None


class Hit(BaseModel):
    id: int
    score: float
    meta: dict[str, Any] | None = None


class RetrieveResult(BaseModel):
    visible: list[str]
    items: list[Hit]


class Label(BaseModel):
    label: str
    probability: float


class ClassifyResult(BaseModel):
    visible: list[str]
    labels: list[Label]


class Candidate(BaseModel):
    modality: str
    expected_reduction: float = Field(..., description="‖σ‖₁ now − ‖σ‖₁ with the modality added "
                                      "(its reconstruction plugged in)")


class NextModalityResult(BaseModel):
    visible: list[str]
    sigma_l1: float
    ranking: list[Candidate]
    next: str | None


# every POST endpoint answers one result per row, in the rows' order
class EncodeResponse(BaseModel):
    results: list[EncodeResult]


class ReconstructResponse(BaseModel):
    results: list[ReconstructResult]


class RetrieveResponse(BaseModel):
    results: list[RetrieveResult]


class ClassifyResponse(BaseModel):
    results: list[ClassifyResult]


class NextModalityResponse(BaseModel):
    results: list[NextModalityResult]


class Error(BaseModel):
    detail: str = Field(..., description="one line, naming the field")
    field: str | None = None
