"""The schema of one experiment's config (pydantic v2): every section, knob, default and description, and
the checks across sections. Unknown keys and wrong types are errors that name the key path. Loading YAML
presets and dotted overrides is `raymh.config.loading`'s job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raymh.errors import InputError


class ConfigError(InputError):
    """A config file, preset name or override is invalid; the message names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(_Section):
    """The built-in synthetic domains (`raymh data synth`), rendered and prepared on first use."""

    images: int = Field(48, ge=1, description="train images per domain")
    val_images: int = Field(12, ge=1, description="val images per domain")
    size: tuple[int, int] = Field((256, 512), description="rendered image size (H, W)")
    seed: int = Field(0, ge=0, description="render seed; same seed, same bytes")
    tuned_on: list[int] = Field(
        default_factory=list, description="render seeds this config's settings were chosen on; `raymh reproduce` "
        "scores on a render seed outside them (held out) unless --render-seed says otherwise"
    )


class DomainConfig(_Section):
    """One dataset trained with the others (a `domains:` item; override as `domains.0.kind`): own head, metrics."""

    name: str = Field(description="domain name: its head, its metrics and its MLflow keys are named after it")
    kind: str = Field(description="dataset adapter: cityscapes | bdd100k | synscapes | folder")
    root: str | None = Field(None, description="raw dataset root in its native layout (prepared on first use)")
    prepared: str | None = Field(None, description="a `raymh data prepare` output dir (wins over root)")
    labeled_fraction: float | None = Field(
        None, gt=0, le=1, description="labeled share of train for this domain (default: data.labeled_fraction)"
    )
    split_file: str | None = Field(None, description="file listing the labeled ids (UniMatch/CAC style)")
    placement: dict[str, str] | None = Field(
        None,
        description="Ray node-label selector saying where this domain's data may be read, decoded and trained on "
        "(e.g. {raymh.io/site: eu-1}; values as Ray's: v, !v, in(a,b), !in(a,b)); used by scaling.placement: by_domain",
    )

    share_predictions: bool = Field(
        False, description="under scaling.placement: by_domain, let this domain's val images, labels and predictions "
        "leave its site as prediction panels (train.panels) and final prediction PNGs in MLflow; without placement "
        "they always may"
    )
    label_diagnostics: bool | None = Field(
        None, description="read the true labels of this domain's unlabeled images for the pseudo-label accuracy "
        "diagnostic (logged, never trained on); default: yes, but not under scaling.placement: by_domain"
    )

    @field_validator("placement")
    @classmethod
    def _selector(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and not v:
            raise ValueError("placement must name at least one node label (e.g. {raymh.io/site: eu-1}), or be left out")
        from raymh.selectors import check_selector

        if v is not None:
            check_selector(v)
        return v

    @field_validator("name")
    @classmethod
    def _name_is_a_key(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", v):
            raise ValueError(f"domain name {v!r} must use only letters, digits, '_' and '-' (it names metrics)")
        return v

    @model_validator(mode="after")
    def _has_source(self) -> DomainConfig:
        if self.root is None and self.prepared is None:
            raise ValueError(f"domain {self.name!r} needs `root` (raw data) or `prepared` (a prepared dir)")
        return self


class ModelConfig(_Section):
    """The multi-head DeepLabv3+: shared trunk, ASPP and decoder fusion, one head per domain, the projection."""

    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = Field("resnet50", description="trunk")
    output_stride: Literal[8, 16] = Field(16, description="backbone output stride (dilation for 16 and 8)")
    head_depth: int = Field(2, ge=1, le=8, description="3x3 conv+BN+ReLU blocks per domain head")
    proj_dim: int = Field(128, ge=8, description="projection dimension of the contrastive features")
    pretrained: str | None = Field(None, description="None, a state-dict file, or 'imagenet' (downloads)")
    sync_bn: Literal["auto", True, False] = Field(
        "auto",
        description="BatchNorm statistics over the batch of all workers (auto: on when the run has more than one worker; elastic: the current count), "
        "so that the result does not depend on the worker count",
    )


class LossConfig(_Section):
    """The Mix Loss: per-domain cross-entropy plus lambda times the directional contrastive loss (DCLoss)."""

    dc_weight: float = Field(0.1, ge=0, description="lambda: Mix Loss weight of DCLoss (0 = supervised only)")
    temperature: float = Field(0.1, gt=0, description="DCLoss temperature T")
    gamma: float = Field(0.75, gt=0, lt=1, description="DCLoss confidence threshold for the target side")
    dc_start_iter: int = Field(0, ge=0, description="DCLoss is off before this step (CAC: 5 epochs)")
    dc_rampup_iters: int = Field(0, ge=0, description="linear ramp of lambda after dc_start_iter")
    chunk_size: int | None = Field(None, ge=1, description="negatives per streamed block (None: automatic)")
    gather_negatives: bool = Field(
        True, description="DCLoss negatives from every worker's crops (all-gather), as with one worker"
    )


class OptimConfig(_Section):
    """Optimizer and poly learning-rate schedule."""

    name: Literal["sgd", "adamw"] = Field(
        "sgd", description="sgd: the method's recipe (pretrained backbones); adamw: converges faster from scratch"
    )
    lr: float = Field(0.01, gt=0, description="base (backbone) learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (AdamW: beta1)")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay (AdamW: decoupled)")
    head_lr_mult: float = Field(10.0, gt=0, description="lr multiplier of ASPP, decoder, heads and projection")
    poly_power: float = Field(0.9, ge=0, description="poly decay power, per iteration")


class DataConfig(_Section):
    """Label ratio, crops, batches, augmentation and where the data is cached."""

    labeled_fraction: float = Field(0.125, gt=0, le=1, description="labeled share of each domain's train split")
    split_seed: int = Field(0, description="seed of the stable labeled-subset rule")
    crop_size: tuple[int, int] = Field((720, 720), description="train crop (H, W); multiples of 8")
    labeled_batch_size: int = Field(
        2, ge=1, description="labeled images per domain per step: per worker with a fixed scaling.num_workers, "
        "over all workers (the global batch, split evenly) with an elastic [min, max]"
    )
    unlabeled_batch_size: int = Field(
        2, ge=1, description="unlabeled crop pairs per domain per step: per worker with a fixed "
        "scaling.num_workers, over all workers (the global batch, split evenly) with an elastic [min, max]"
    )
    scale_range: tuple[float, float] = Field((0.5, 2.0), description="labeled random scale range")
    unlabeled_scale_range: tuple[float, float] = Field((0.8, 2.0), description="crop-pair scale range")
    val_size: tuple[int, int] | None = Field(None, description="resize val images to (H, W); None: as they are")
    transforms_on: Literal["ray_data", "worker", "tasks"] = Field(
        "ray_data",
        description="where train batches are decoded and augmented: Ray Data CPU tasks (scales out to the "
        "cluster's CPUs), the train worker itself between steps (no extra processes), or plain Ray tasks the "
        "worker keeps running beside its step (no Ray Data executor to start; the encoded rows are cached)",
    )
    tasks_in_flight: int = Field(
        2, ge=1, description="transforms_on: tasks: decode tasks each worker keeps running per set"
    )
    cache_dir: str = Field("~/.cache/raymh", description="where synthetic and auto-prepared data are cached")
    synthetic: SynthConfig | None = Field(None, description="render the built-in synthetic domains")

    @field_validator("crop_size")
    @classmethod
    def _crop_on_grid(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] % 8 or v[1] % 8 or min(v) <= 0:
            raise ValueError(f"crop_size {list(v)} must be positive multiples of 8 (e.g. {[v[0] // 8 * 8 or 8, v[1] // 8 * 8 or 8]})")
        return v

    @field_validator("scale_range", "unlabeled_scale_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"range {list(v)} must satisfy 0 < low <= high")
        return v


class TrainConfig(_Section):
    """The counted-step training loop: length, logging, evaluation, checkpoints, precision."""

    iters: int = Field(1000, ge=1, description="optimizer steps (counted, the same on every rank)")
    eval_every: int = Field(500, ge=1, description="evaluate (and checkpoint) every this many steps, and at the end")
    checkpoint_every: int = Field(
        500, ge=1, description="also checkpoint every this many steps between evaluations (what a Ctrl-C, a "
        "preemption or a lost worker can cost at most); kept: the latest plus num_to_keep best evaluated"
    )
    log_every: int = Field(10, ge=1, description="log losses to MLflow and the console every this many steps")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast + channels_last on GPUs and bf16-capable CPUs (AVX512-BF16/AMX), else fp32"
    )
    channels_last: bool | None = Field(None, description="None: on whenever bf16 is on")
    forward: Literal["joint", "per_domain"] = Field(
        "joint", description="one trunk pass over all domains' images, or one per domain (less memory)"
    )
    eval_mode: Literal["whole", "slide"] = Field("whole", description="whole-image or sliding-window eval")
    eval_crop: tuple[int, int] | None = Field(None, description="sliding-window size (default: crop_size)")
    num_to_keep: int = Field(2, ge=1, description="best checkpoints kept (by mean val mIoU), plus the latest")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the last checkpoint (-1: always)")
    seed: int = Field(0, ge=0, description="seed of model init, augmentation and dropout (raymh.streams)")
    panels: int = Field(2, ge=0, description="prediction panels per domain logged at each evaluation")


class ScalingConfig(_Section):
    """Ray Train workers and their resources."""

    num_workers: int | tuple[int, int] = Field(
        1, description="Ray Train workers (DDP ranks): a count, or [min, max] for an elastic run that goes on with "
        "as many as the cluster holds and restarts from its latest checkpoint when workers leave or join "
        "(docs/elastic.md); elastic: data batch sizes are global and every count in the range must divide them"
    )
    use_gpu: bool = Field(False, description="one or more GPUs per worker")
    gpus_per_worker: float = Field(1.0, gt=0, description="GPUs per worker when use_gpu")
    cpus_per_worker: int = Field(2, ge=1, description="CPUs per worker; torch threads match it")
    data_cpus: float | None = Field(None, gt=0, description="CPUs per decode/augment task (Ray Data or data.transforms_on: tasks; None: 1)")
    placement: Literal["none", "by_domain"] = Field(
        "none",
        description="by_domain: each worker serves one domain on nodes matching that domain's `placement` "
        "selector, where its data is also read and decoded (docs/placement.md); none: every worker reads every domain",
    )
    workers_per_domain: int = Field(
        1, ge=1, description="workers per domain under placement: by_domain (train workers = domains x this)"
    )

    @field_validator("num_workers", mode="before")
    @classmethod
    def _count_or_range(cls, v: Any) -> int | tuple[int, int]:
        """A count >= 1, or [min, max] with 1 <= min <= max; anything else is one message saying both forms."""

        def count(x: Any) -> int | None:
            if isinstance(x, int) and not isinstance(x, bool):
                return x
            return int(x) if isinstance(x, str) and x.strip().isdigit() else None

        form = "a count (e.g. 2) or an elastic range [min, max] (e.g. [1, 4])"
        if isinstance(v, list | tuple):
            lo, hi = (count(v[0]), count(v[1])) if len(v) == 2 else (None, None)
            if lo is None or hi is None:
                raise ValueError(f"num_workers must be {form}")
            if not 1 <= lo <= hi:
                raise ValueError(f"num_workers range [min, max] needs 1 <= min <= max (e.g. [1, {max(hi, 2)}])")
            return (lo, hi)
        n = count(v)
        if n is None:
            raise ValueError(f"num_workers must be {form}")
        if n < 1:
            raise ValueError("num_workers must be >= 1")
        return n

    @property
    def elastic(self) -> bool:
        """True for a [min, max] worker range (Ray Train's elastic scaling)."""
        return isinstance(self.num_workers, tuple)

    @property
    def worker_range(self) -> tuple[int, int]:
        """(min, max) Ray Train workers; (n, n) for a fixed count."""
        return self.num_workers if isinstance(self.num_workers, tuple) else (self.num_workers, self.num_workers)


class TrackingConfig(_Section):
    """MLflow tracking and Ray Train storage."""

    experiment: str = Field("raymh", description="MLflow experiment name")
    tracking_uri: str | None = Field(None, description="MLflow URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    storage_path: str = Field("./ray_results", description="Ray Train storage (absolute, shared on clusters)")
    run_name: str | None = Field(None, description="run name; None: a fresh unique name")
    log_model: bool = Field(True, description="log the best model as a pickle-free MLflow pyfunc (models-from-code)")
    register_model: str | None = Field(None, description="also register the logged model under this name")


class ExperimentConfig(_Section):
    """A whole experiment: its domains and one section per layer."""

    name: str = Field("raymh", description="experiment preset name")
    domains: list[DomainConfig] = Field(description="the datasets trained together, one head each")
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    scaling: ScalingConfig = ScalingConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("domains")
    @classmethod
    def _unique_domains(cls, v: list[DomainConfig]) -> list[DomainConfig]:
        if not v:
            raise ValueError("at least one domain is needed")
        names = [d.name for d in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"domain names must be unique; repeated: {dupes}")
        return v

    @model_validator(mode="after")
    def _placement_complete(self) -> ExperimentConfig:
        placed = [i for i, d in enumerate(self.domains) if d.placement is not None]
        s = self.scaling
        if s.placement == "by_domain":
            missing = [f"domains[{i}] ({d.name})" for i, d in enumerate(self.domains) if d.placement is None]
            if missing:
                raise ValueError(
                    f"scaling.placement is by_domain but {', '.join(missing)} has no `placement` selector; give "
                    "every domain one (e.g. placement: {raymh.io/site: eu-1})"
                )
            if s.elastic:
                raise ValueError(
                    f"scaling.num_workers={list(s.num_workers)} (elastic) is not supported with placement by_domain "
                    "(each domain has a fixed number of workers on its own nodes); give scaling.num_workers as a "
                    "count, or set scaling.placement=none"
                )
            if s.num_workers not in (1, self.train_workers):
                raise ValueError(
                    f"scaling.num_workers={s.num_workers} under placement by_domain: the workers are "
                    f"{len(self.domains)} domains x scaling.workers_per_domain={s.workers_per_domain} = "
                    f"{self.train_workers}; set scaling.workers_per_domain instead (and leave num_workers at 1)"
                )
            if self.data.transforms_on == "ray_data":
                raise ValueError(
                    "data.transforms_on=ray_data is refused under scaling.placement=by_domain: Ray Data lists the "
                    "files and reads Parquet footers in the driver, off every site; set data.transforms_on=worker "
                    "or tasks (docs/placement.md)"
                )
            raw = [f"domains[{i}] ({d.name})" for i, d in enumerate(self.domains) if d.prepared is None]
            if raw:
                raise ValueError(
                    f"{', '.join(raw)}: a `root:` domain is refused under scaling.placement=by_domain, since the "
                    "driver would prepare, hash and read its raw files; run `raymh data prepare` on a node of its "
                    "site and give `prepared:` (a path on the site's nodes) instead"
                )
        elif placed:
            raise ValueError(
                f"domains[{placed[0]}] ({self.domains[placed[0]].name}) has a `placement` selector but "
                "scaling.placement is 'none', so it would not be honoured: set scaling.placement=by_domain, "
                "or drop the selector"
            )
        return self

    @property
    def batch_sizes(self) -> dict[str, int]:
        """The data batch sizes by their keys (global per domain under an elastic worker range)."""
        return {"data.labeled_batch_size": self.data.labeled_batch_size,
                "data.unlabeled_batch_size": self.data.unlabeled_batch_size}  # fmt: skip

    def undivided_batches(self, counts: Iterable[int]) -> dict[str, list[int]]:
        """Each data batch key some of `counts` workers cannot split evenly, with those counts (empty: all can)."""
        bad = {k: [n for n in counts if b % n] for k, b in self.batch_sizes.items()}
        return {k: v for k, v in bad.items() if v}

    @model_validator(mode="after")
    def _elastic_batches_divide(self) -> ExperimentConfig:
        if not self.scaling.elastic:
            return self
        lo, hi = self.scaling.worker_range
        if bad := self.undivided_batches(range(lo, hi + 1)):
            what = "; ".join(f"{k}={self.batch_sizes[k]} is not divisible by {', '.join(map(str, v))} worker(s)"
                             for k, v in bad.items())  # fmt: skip
            fits = [n for n in range(lo, hi + 1) if not self.undivided_batches([n])]
            raise ValueError(
                f"scaling.num_workers={[lo, hi]} is elastic, so the data batch sizes are global batches per domain "
                f"split evenly over the workers: {what}. Use batch sizes that every count from {lo} to {hi} "
                f"divides (e.g. multiples of {math.lcm(*range(lo, hi + 1))})"
                + (f", or a narrower range (the counts from {lo} to {hi} that divide them: {fits})" if fits else "")
            )
        return self

    @property
    def train_workers(self) -> int:
        """Ray Train workers (DDP ranks): domains x workers_per_domain under placement by_domain, else
        num_workers (an elastic range: its max, what the cluster is sized for)."""
        if self.scaling.placement == "by_domain":
            return len(self.domains) * self.scaling.workers_per_domain
        return self.scaling.worker_range[1]

    def batch_per_worker(self, part: Literal["labeled", "unlabeled"], world_size: int) -> int:
        """Images (labeled) or crop pairs (unlabeled) per domain one of `world_size` workers takes per step:
        the configured batch with a fixed worker count; with an elastic range, the global batch / world_size."""
        batch = self.data.labeled_batch_size if part == "labeled" else self.data.unlabeled_batch_size
        if not self.scaling.elastic:
            return batch
        lo, hi = self.scaling.worker_range
        if not lo <= world_size <= hi or batch % world_size:
            raise ConfigError(
                f"data.{part}_batch_size={batch} is the global batch of an elastic run "
                f"(scaling.num_workers={[lo, hi]}); {world_size} workers cannot split it evenly"
            )
        return batch // world_size

    def labeled_fraction(self, domain: DomainConfig) -> float:
        """The labeled share of one domain: its own setting, else data.labeled_fraction."""
        return domain.labeled_fraction if domain.labeled_fraction is not None else self.data.labeled_fraction

    def reads_unlabeled_labels(self, domain: DomainConfig) -> bool:
        """Whether the true labels of the domain's unlabeled images are read (for a diagnostic only): its
        label_diagnostics, by default not under placement by domain (docs/placement.md)."""
        if domain.label_diagnostics is not None:
            return domain.label_diagnostics
        return self.scaling.placement != "by_domain"

    def shares_predictions(self, name: str) -> bool:
        """Whether the domain's val images, labels and predictions may go to MLflow (panels, final PNGs)."""
        return self.scaling.placement != "by_domain" or self.domain(name).share_predictions

    def domain(self, name: str) -> DomainConfig:
        """The domain config of this name."""
        for d in self.domains:
            if d.name == name:
                return d
        raise KeyError(f"no domain {name!r}; the config has {[d.name for d in self.domains]}")
