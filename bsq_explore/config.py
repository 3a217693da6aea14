"""BSQConfig, the frozen description of a run, its per-stage Schedule, and PRESETS kept as data."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["MAX_BITS", "BSQConfig", "STAGES", "ACT_BITS_RULE", "act_bits_ok", "Schedule", "MAX_THREADS",
           "MAX_EPOCHS", "MAX_BATCH", "MAX_IMAGES", "DEVICES", "LR_SCHEDULES", "PRECISIONS", "UNIFORM_BITS",
           "MODELS", "TORCHVISION", "CUSTOM", "DATASETS", "DATASET_CLASSES", "PRESETS", "DEFAULT_PRESET", "preset", "differences"]

MAX_BITS = 16  # float32 holds every integer below 2**24 exactly; 16 bits leaves ample margin


@dataclass(frozen=True)
class BSQConfig:
    """Every knob of a staged run: float pretraining -> conversion -> BSQ -> finetuning.

    Each stage runs SGD with momentum. With lr_schedule "step" its lr is multiplied by lr_gamma
    at each of its milestones (epochs within the stage); with "cosine" it falls from the stage's
    lr towards 0 along a half cosine over the stage's epochs (milestones unused). A stage with 0
    epochs is skipped; a run with bsq_epochs = 0 is a uniform-precision baseline at nbits
    (quantization-aware finetuning). precision "bf16" runs the convolutions and matmuls of
    training steps in bfloat16 (autocast), on images laid out channels_last (train.laid_out); weights,
    bit planes, the Lasso, re-quantization and evaluation stay float32.
    """
    dataset: str = "digits"           # digits | mnist | fashion-mnist | cifar10 | folder:PATH
    model: str = "mlp"                # mlp | lenet5 | resnet20 | resnet32 | resnet56 | torchvision:NAME
    float_layers: str = ""            # comma-separated layer names (fnmatch patterns) convert_ leaves in float
    act_bits: int = 0                 # 0 = float activations
    nbits: int = 8                    # precision at conversion
    max_bits: int = 8                 # a layer never grows beyond this
    alpha: float = 0.16               # strength of the bit-level group Lasso
    requant_every: int = 10           # BSQ epochs between re-quantizations
    pretrain_epochs: int = 30
    pretrain_lr: float = 0.1
    pretrain_milestones: tuple[int, ...] = (20,)
    bsq_epochs: int = 40
    bsq_lr: float = 0.05
    bsq_milestones: tuple[int, ...] = ()
    finetune_epochs: int = 20
    finetune_lr: float = 0.01
    finetune_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    lr_schedule: str = "step"         # step | cosine
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    train_subset: int = 0             # keep this many training images (0 = all)
    test_subset: int = 0
    pretrained: str = ""              # a float model's state_dict (.pt) to start from instead of pretraining
    download: bool = False            # let torchvision fetch mnist / fashion-mnist / cifar10
    seed: int = 0
    device: str = "cpu"               # cpu | cuda | cuda:N | auto
    precision: str = "fp32"           # fp32 | bf16: the compute type of training steps
    threads: int = 1                  # intra-op CPU threads: set by the config, never by the scheduler,
                                      # since they change float summation order and so every frame
    layer_bits: str = ""              # "name=bits,...": every converted layer at its own fixed precision
                                      # (a Hessian allocation, sensitivity.allocate_bits); "": all at nbits

    def __post_init__(self):
        for f in dataclasses.fields(self):  # a run.json or --config file can hold any JSON value
            value = getattr(self, f.name)
            if not _has_type(value, f.default):
                raise ValueError(f"{f.name} must be {_TYPE_NAMES[type(f.default)]}, got {value!r:.40}")
            if isinstance(value, float) and not math.isfinite(value):  # nan slips through the checks below
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        for ok, message in _rules(self):
            if not ok:
                raise ValueError(message)

    def schedule(self, stage: str) -> "Schedule":
        """The epochs and lr of a stage (pretrain, bsq or finetune)."""
        epochs, lr, milestones = {"pretrain": (self.pretrain_epochs, self.pretrain_lr, self.pretrain_milestones),
                                  "bsq": (self.bsq_epochs, self.bsq_lr, self.bsq_milestones),
                                  "finetune": (self.finetune_epochs, self.finetune_lr, self.finetune_milestones)}[stage]
        return Schedule(stage, epochs, lr, milestones, self.lr_gamma, self.lr_schedule == "cosine")

    def epoch_count(self) -> int:
        """How many epochs the run logs: every stage's epochs, and BSQ's epoch 0."""
        return sum(s.epochs + s.snapshot for s in map(self.schedule, STAGES))

    def chosen_bits(self) -> dict[str, int]:
        """layer_bits as {layer: bits} ({} when every layer starts at nbits)."""
        return _parse_layer_bits(self.layer_bits) or {}

    def replace(self, **changes) -> "BSQConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BSQConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(names)
        if unknown:
            raise ValueError(f"unknown config fields {', '.join(sorted(unknown))}; valid: {', '.join(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


STAGES = ("pretrain", "bsq", "finetune")  # a run's stages, in order
ACT_BITS_RULE = f"act_bits must be 0 (float activations) or 1..{MAX_BITS}"


def act_bits_ok(act_bits) -> bool:
    return act_bits == 0 or 1 <= act_bits <= MAX_BITS


class Schedule(NamedTuple):
    """One stage's epochs and learning rate."""
    stage: str
    epochs: int
    lr: float
    milestones: tuple[int, ...]
    gamma: float
    cosine: bool

    @property
    def snapshot(self) -> bool:
        """Whether the stage logs an epoch 0 on entry: BSQ's model as converted, untrained."""
        return self.stage == "bsq" and self.epochs > 0

    def lr_at(self, epoch: int) -> float:
        """The lr of an epoch (1..epochs): x gamma after each milestone, or a half cosine from lr
        (epoch 1) towards 0 (the last epoch keeps a small step)."""
        if self.cosine:
            return self.lr * 0.5 * (1 + math.cos(math.pi * (min(max(epoch, 1), self.epochs) - 1) / max(self.epochs, 1)))
        return self.lr * self.gamma ** sum(epoch > m for m in self.milestones)


def _rules(c: BSQConfig) -> list[tuple[bool, str]]:
    """Every rule a config keeps, with the line that says it when broken."""
    epochs = (c.pretrain_epochs, c.bsq_epochs, c.finetune_epochs)
    milestones = (*c.pretrain_milestones, *c.bsq_milestones, *c.finetune_milestones)
    return [
        (1 <= c.nbits <= MAX_BITS, f"nbits must be 1..{MAX_BITS}"),
        (c.nbits <= c.max_bits <= MAX_BITS, f"max_bits must be nbits..{MAX_BITS}"),
        (c.alpha >= 0, "alpha must be >= 0"),
        (1 <= c.requant_every <= MAX_EPOCHS, f"requant_every must be 1..{MAX_EPOCHS:,}"),
        (all(0 <= e <= MAX_EPOCHS for e in epochs), f"epochs must be 0..{MAX_EPOCHS:,} a stage"),
        (all(1 <= m <= MAX_EPOCHS for m in milestones), f"milestones must be epochs 1..{MAX_EPOCHS:,}"),
        (min(c.pretrain_lr, c.bsq_lr, c.finetune_lr) > 0, "learning rates must be > 0"),
        (c.lr_gamma > 0, "lr_gamma must be > 0"),
        (c.momentum >= 0 and c.weight_decay >= 0, "momentum and weight_decay must be >= 0"),
        (0 <= c.seed < 2**63, "seed must be 0..2**63 - 1"),  # torch.manual_seed folds others onto these
        (1 <= c.batch_size <= MAX_BATCH, f"batch_size must be 1..{MAX_BATCH:,}"),
        (sum(epochs) > 0, "a run needs at least one epoch"),
        (1 <= c.threads <= MAX_THREADS, f"threads must be 1..{MAX_THREADS}"),
        (0 <= min(c.train_subset, c.test_subset) and max(c.train_subset, c.test_subset) <= MAX_IMAGES,
         f"subsets must be 0..{MAX_IMAGES:,} images"),
        (act_bits_ok(c.act_bits), ACT_BITS_RULE),
        (_layer_bits_ok(c), "layer_bits must be name=bits pairs with bits 1..max_bits, for a run of finetune epochs "
                            "and no BSQ epochs"),
        (c.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}"),
        (c.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
        (c.device in DEVICES or c.device.startswith("cuda:"), f"device must be {', '.join(DEVICES)} or cuda:N"),
        (c.model in MODELS or c.model.startswith((TORCHVISION, CUSTOM)),
         f"unknown model {c.model!r}; choose one of: {', '.join(MODELS)}, {TORCHVISION}NAME"),
        (c.dataset in DATASETS or c.dataset.startswith(("folder:", CUSTOM)),
         f"unknown dataset {c.dataset!r}; choose one of: {', '.join(DATASETS)}, folder:PATH"),
    ]


def _parse_layer_bits(text: str) -> dict[str, int] | None:
    """'name=bits,...' as {name: bits}; None when it is not that."""
    pairs = [p.split("=") for p in text.split(",")] if text else []
    if not all(len(p) == 2 and p[0].strip() and re.fullmatch(r"[0-9]{1,2}", p[1].strip()) for p in pairs):
        return None
    return {name.strip(): int(bits) for name, bits in pairs}


def _layer_bits_ok(c: BSQConfig) -> bool:
    """layer_bits empty, or bits of 1..max_bits for a run that only finetunes (no BSQ epochs)."""
    chosen = _parse_layer_bits(c.layer_bits)
    return not c.layer_bits or (chosen is not None and c.bsq_epochs == 0 and c.finetune_epochs > 0 and
                                all(1 <= b <= c.max_bits for b in chosen.values()))


def _has_type(value, default) -> bool:
    """Whether value has the type of the field whose default is given: ints are not bools, a float
    field takes an int, milestones are a tuple of ints."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, tuple):
        return isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, type(default))


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               tuple: "a list of integers"}
MAX_THREADS = 256
MAX_EPOCHS = 10_000     # a stage's epochs (the paper's longest stage has 350)
MAX_BATCH = 65_536
MAX_IMAGES = 10**9      # a subset's size
DEVICES = ("cpu", "cuda", "auto")  # and cuda:N
LR_SCHEDULES = ("step", "cosine")
PRECISIONS = ("fp32", "bf16")
UNIFORM_BITS = (2, 3, 4, 8)  # a sweep's uniform-precision baselines unless it names others
MODELS = ("mlp", "lenet5", "resnet20", "resnet32", "resnet56")
TORCHVISION = "torchvision:"  # --model torchvision:resnet18: any torchvision classifier, untrained
CUSTOM = "custom:"  # a model or dataset of one's own, given to fit(): custom:<its class name>
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
DATASET_CLASSES = 10  # each of DATASETS: the digits 0-9, ten kinds of clothes, CIFAR-10's ten objects

# Presets are data: the fields that differ from BSQConfig's defaults.
PRESETS: dict[str, dict] = {
    # digits MLP 64-256-128-10, 30 float + 40 BSQ (requantize every 10) + 20 finetune epochs, batch 128.
    # DESIGN 2b's figures are at batch 64 (--batch-size 64: alpha 0.16 ~13x, 0.18 ~18x, as the original
    # code gives): alpha acts through alpha x lr x steps per re-quantization, so at 128 it does about half
    "digits-mlp": {},
    "digits-cnn": dict(model="lenet5", alpha=0.1),
    "mnist-lenet5": dict(dataset="mnist", model="lenet5", alpha=0.05, pretrain_epochs=10, pretrain_milestones=(7,),
                         bsq_epochs=20, requant_every=5, finetune_epochs=5),
    # the paper recipe (Yang et al. 2021): ResNet-20, 4-bit activations, 8-bit start
    "cifar10-resnet20": dict(dataset="cifar10", model="resnet20", act_bits=4, alpha=5e-3,
                             pretrain_epochs=200, pretrain_lr=0.1, pretrain_milestones=(100, 150),
                             bsq_epochs=350, bsq_lr=0.1, bsq_milestones=(250,), requant_every=100,
                             finetune_epochs=300, finetune_lr=0.01, finetune_milestones=(150, 250)),
    # Fashion-MNIST (60k/10k, read from its IDX files) with LeNet-5 and float activations: 469 steps
    # per epoch at batch 128, ~40x digits', so its interesting alphas are ~10x smaller (DESIGN 2b)
    "fashion-lenet5": dict(dataset="fashion-mnist", model="lenet5", alpha=0.02, pretrain_epochs=20,
                           pretrain_lr=0.05, pretrain_milestones=(15,), bsq_epochs=12, requant_every=4,
                           finetune_epochs=4),
    # the paper's model and 4-bit activations on all of CIFAR-10, sized for 2 CPU cores (bf16, 2 threads):
    # 80 cosine float epochs, then 11 BSQ epochs (4,301 steps, re-quantized every 3) and 6 finetune
    # epochs (2,346 steps): not the paper's 650-epoch recipe
    "cifar10-resnet20-cpu": dict(dataset="cifar10", model="resnet20", act_bits=4, alpha=0.1, lr_schedule="cosine",
                                 precision="bf16", threads=2, weight_decay=5e-4,
                                 pretrain_epochs=80, pretrain_milestones=(), bsq_epochs=11, bsq_lr=0.1,
                                 requant_every=3, finetune_epochs=6),
    # same model and recipe shape, a few epochs on a subset: minutes on a CPU
    "cifar10-resnet20-quick": dict(dataset="cifar10", model="resnet20", act_bits=4, alpha=5e-3,
                                   pretrain_epochs=3, pretrain_milestones=(), bsq_epochs=4, bsq_lr=0.1,
                                   requant_every=2, finetune_epochs=2, train_subset=2000, test_subset=500),
}
DEFAULT_PRESET = "digits-mlp"


def differences(mine: BSQConfig, given: BSQConfig) -> list[str]:
    """The fields where given differs from mine, as 'alpha (0.3 in the run, 0.5 given)'."""
    own = mine.to_dict()
    return [f"{k} ({own[k]!r} in the run, {v!r} given)" for k, v in given.to_dict().items() if own[k] != v]


def preset(name: str, **overrides) -> BSQConfig:
    """The config of a named preset, with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return BSQConfig(**{**PRESETS[name], **overrides})
