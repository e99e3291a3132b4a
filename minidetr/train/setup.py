"""What a training run is made of: its config, model, data and set criterion.

``TrainConfig`` holds every choice besides the model's shape; the ``make_*``
functions build the pieces a :class:`~minidetr.train.loop.Run` puts together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from minidetr.data import DATASETS, Dataset
from minidetr.data.coco_json import open_coco_datasets, read_coco_file
from minidetr.model import PRESETS, MiniDETR, ModelConfig
from minidetr.setloss import LossWeights, SetCriterion
from minidetr.setloss.matching import HungarianMatcher
from minidetr.train.config_checks import check_train_config
from minidetr.train.ema import check_decay


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run besides the model's shape."""

    preset: str = "deformable"
    encoder_attention: str = "softmax"  # the standard preset's encoder core (ModelConfig)
    dataset: str = "shapes"  # a built-in set's name, or a COCO-format file PATH.json
    val_dataset: str | None = None  # COCO-format validation file (default: a held-out tenth)
    images: str | None = None  # folder of the COCO files' images (default: each JSON's folder)
    steps: int = 2200  # sized for 5 minutes on two idle cores, evaluation included
    batch_size: int = 16
    # measured at step 800 of 800: AP 0.652 at 1e-3, 0.704 at 2e-3, 0.765 at 3e-3
    lr: float = 3e-3
    backbone_lr_ratio: float = 0.5  # the backbone learns this much slower (DETR: 0.1)
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    final_lr_ratio: float = 0.05  # cosine decay ends at this fraction of lr
    clip_norm: float = 0.1  # DETR's max global gradient norm
    train_images: int = 20000
    val_images: int = 256
    seed: int = 0
    checkpoint_every: int = 100
    # loss: DETR weights 1/5/2 (softmax); Deformable DETR 2/5/2 (focal)
    weight_class: float = 2.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    eos_coef: float = 0.1
    aux_loss: bool = True
    dn_groups: int = 3  # denoising groups, when the model has denoising
    dn_label_noise: float = 0.25
    dn_box_noise: float = 0.4
    dn_contrastive: bool = True
    # W of the attention entropy penalty W * mean H (0: off); dense (softmax) attention only
    attention_entropy: float = 0.0
    offset_l2: float = 0.0  # L2 penalty on deformable sampling offsets, in level pixels (0: off)
    # decay of the weights' moving average that is evaluated and shipped (0: the weights)
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        check_train_config(self)
        check_decay(self.ema_decay)
        if self.encoder_attention != "softmax" and self.preset in PRESETS:
            # the model config says whether this preset can take that encoder attention
            replace(PRESETS[self.preset], encoder_attention=self.encoder_attention)
        if self.attention_entropy != 0 and self.preset in PRESETS:
            dense = PRESETS[self.preset].variant == "standard"
            if not (dense and self.encoder_attention == "softmax"):
                raise ValueError(
                    "attention_entropy needs dense softmax attention (preset 'standard' with "
                    f"softmax encoder attention), got preset {self.preset!r} with "
                    f"{self.encoder_attention!r} encoder attention"
                )
        if self.offset_l2 and self.preset in PRESETS:  # only a deformable preset has offsets
            replace(PRESETS[self.preset], offset_l2=self.offset_l2)


def make_model(
    preset: str, num_classes: int, encoder_attention: str = "softmax", offset_l2: float = 0.0
) -> MiniDETR:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = replace(
        PRESETS[preset],
        num_classes=num_classes,
        encoder_attention=encoder_attention,
        offset_l2=offset_l2,
    )
    return MiniDETR(config)


def dataset_class(name: str) -> type:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def is_coco_file(name: str) -> bool:
    return name.endswith(".json")


def num_classes(cfg: TrainConfig) -> int:
    """How many classes the run's data has (a COCO file's categories, or a built-in set's)."""
    if is_coco_file(cfg.dataset):
        return len(read_coco_file(cfg.dataset)["categories"])
    return len(dataset_class(cfg.dataset).classes)


def make_datasets(cfg: TrainConfig, image_size: int) -> tuple[Dataset, Dataset]:
    if is_coco_file(cfg.dataset):
        return open_coco_datasets(
            cfg.dataset, image_size, val_path=cfg.val_dataset, images_dir=cfg.images, seed=cfg.seed
        )
    cls = dataset_class(cfg.dataset)
    train = cls("train", num_images=cfg.train_images, image_size=image_size, seed=cfg.seed)
    val = cls("val", num_images=cfg.val_images, image_size=image_size, seed=cfg.seed)
    return train, val


def make_criterion(cfg: TrainConfig, model_cfg: ModelConfig) -> SetCriterion:
    focal = model_cfg.focal
    matcher = HungarianMatcher(
        cost_class=cfg.weight_class,
        cost_bbox=cfg.weight_bbox,
        cost_giou=cfg.weight_giou,
        focal=focal,
    )
    weights = LossWeights(
        ce=cfg.weight_class,
        bbox=cfg.weight_bbox,
        giou=cfg.weight_giou,
        aux=1.0 if cfg.aux_loss else 0.0,  # the ablation: earlier decoder layers are not matched
    )
    return SetCriterion(
        model_cfg.num_classes,
        matcher,
        weights,
        eos_coef=cfg.eos_coef,
        losses=("labels", "boxes"),
        focal=focal,
    )
