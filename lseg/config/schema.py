"""The config schema: every key of every entry point, its type and default.

Why a module of its own: the schema *is* the reference users read (README points here), while
``lseg.config.loading`` is machinery; keeping them apart lets either be read in one sitting.
Nested sections are dataclasses; types are checked and values validated by the loader.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TextConfig:
    arch: str = "ViT-B-32"  # open_clip model name; only its text tower is built
    pretrained: str = "openai"  # open_clip pretrained tag, used when model.pretrained is true
    # Overrides of the arch's text tower (tiny towers for tests); None keeps the arch's value.
    width: int | None = None
    layers: int | None = None
    heads: int | None = None
    embed_dim: int | None = None


@dataclass
class ModelConfig:
    # Image encoder, one of lseg.models.backbone.BACKBONES: vit_large_patch16_384, vit_base_patch32_384,
    # resnet101, vit_tiny_patch16_224
    backbone: str = "vit_large_patch16_384"
    hooks: list[int] | None = None  # ViT blocks feeding the decoder; None: the backbone's official ones
    reassemble_channels: list[int] | None = None  # ViT reassemble widths; None: the backbone's official ones
    features: int = 256
    arch_option: int = 0  # 0: none, 1: bottleneck block, 2: depthwise block (official)
    block_depth: int = 0  # official semantics: applied max(block_depth, 1) times
    activation: str = "lrelu"  # relu | lrelu | tanh (spatial-regularisation blocks)
    logit_scale: float = 1 / 0.07
    learnable_logit_scale: bool = False
    grad_checkpointing: bool = False
    pretrained: bool = False
    weights_cache: str | None = None  # local cache dir for timm/open_clip weights (offline nodes)
    text: TextConfig = field(default_factory=TextConfig)


@dataclass
class FolderConfig:
    """Label encoding of the ``folder`` dataset (a user's own images/ + masks/ + classes.txt)."""

    ignore_index: int = 255  # mask value that marks unlabelled pixels
    zero_is: str = "class"  # class: value 0 is the first line of classes.txt | ignore: 0 unlabelled, k -> line k


@dataclass
class DataConfig:
    root: str = "data/mseg_dataset"  # parent folder of the datasets (MSEG_DST_DIR/mseg_dataset for MSeg)
    # Per-dataset folder, overriding <root>/<the dataset's default folder>, e.g. {foodseg103: /data/FoodSeg103}
    roots: dict[str, str] = field(default_factory=dict)
    # Classes the run is trained and scored on: "universal" (MSeg taxonomy) or a registered dataset's own list
    label_space: str = "universal"
    # Label-space classes whose prompts never reach training and whose pixels are ignored (zero-shot measured)
    holdout_classes: list[str] = field(default_factory=list)
    # None: held-out pixels are ignored in training. A seen class (e.g. "others"): they are labelled as that
    # class instead, as the official zero-shot training does (novel objects become background).
    holdout_label_as: str | None = None
    folder: FolderConfig = field(default_factory=FolderConfig)
    mseg_root: str | None = None  # mseg-api checkout; None: env MSEG_ROOT, else ./mseg
    # Folder laid out like mseg-api's dataset_lists (<dataset>/list/<split>.txt). None: <root>/dataset_lists
    # when that exists (synthetic data), else <mseg_root>/mseg/dataset_lists.
    lists_root: str | None = None
    train_datasets: list[str] = field(
        default_factory=lambda: ["coco-panoptic-133-relabeled", "ade20k-150-relabeled"]
    )
    train_ratios: list[float] | None = None  # None: plain concatenation
    train_split: str = "train"
    val_datasets: list[str] = field(
        default_factory=lambda: ["coco-panoptic-133-relabeled", "ade20k-150-relabeled"]
    )
    val_split: str = "val"
    base_size: int = 520
    crop_size: int = 480
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    hflip: bool = True
    eval_size: int = 480
    num_workers: int = 8
    class_names_file: str | None = None  # YAML/TSV overriding readable class names
    on_bad_sample: str = "skip"  # skip | error
    max_bad_fraction: float = 0.01


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 1e-3  # official: 0.004 / 16 * per-GPU batch (4)
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    decoder_lr_mult: float = 10.0
    poly_power: float = 0.9
    warmup_steps: int = 0
    warmup_factor: float = 1e-3
    min_lr: float = 0.0
    clip_grad_norm: float | None = None


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    max_steps: int = 160_000
    batch_size: int = 4  # per process (GPU)
    accum_steps: int = 1
    precision: str = "bf16"  # bf16 | fp16 | fp32
    seed: int = 0
    ckpt_every: int = 2000
    keep_last: int = 3
    keep_every: int = 0  # also keep every M-th step's checkpoint (for averaging); 0 = off
    resume: bool = True
    allow_world_size_change: bool = False
    max_nonfinite_steps: int = 20
    ema_decay: float = 0.0  # 0 = no EMA
    compile: bool = False
    channels_last: bool = False
    freeze_bn: bool = False  # BatchNorm in eval mode while training (exact DDP/accumulation parity)
    device: str = "auto"  # auto | cpu | cuda
    # Bands of output rows the upsample + cross-entropy run over: peak loss memory ~3/loss_chunks of the
    # full-resolution logits, a few kernel launches per band.
    loss_chunks: int = 8
    fp16_init_scale: float = 65536.0  # GradScaler's first loss scale (fp16); halved at every overflow
    # Start a new run from the weights of an lseg-hpc checkpoint (training, averaged or converted official):
    # weights only, strict; resume from the run dir's own checkpoints takes precedence.
    init_from: str | None = None
    init_exclude: list[str] = field(default_factory=list)  # regexes of weight keys not taken from init_from
    init_ema: bool = False  # take the source's EMA weights
    # run: every step's text labels are the label space's classes. per_sample: one-class-per-image datasets
    # (fss-1000): ["others"] + the distinct classes of the batch's samples (lseg/engine/per_sample.py)
    label_set: str = "run"


@dataclass
class EvalConfig:
    every: int = 4000  # 0: only at the end
    batch_size: int = 4
    max_samples: int | None = None  # per val dataset; None = all
    num_image_panels: int = 4


@dataclass
class LogConfig:
    every: int = 20
    tensorboard: bool = True


@dataclass
class DistConfig:
    backend: str = "auto"  # auto | nccl | gloo
    timeout_s: int = 1800
    port: int | None = None  # None: derived from the Slurm job id, else 29500
    bucket_cap_mb: float = 25.0  # DDP gradient bucket size: fewer, larger all-reduces vs. earlier overlap
    gradient_as_bucket_view: bool = True  # gradients are views into DDP's buckets: one copy of them less
    static_graph: bool = True  # applied where valid: train.accum_steps == 1 and train.compile off


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)
