r"""A small Vision Transformer trained from scratch on CIFAR-10 (TFDS catalog).

Prepare the data once (needs the network and, for this step only, TensorFlow):
  pip install tensorflow && tfds build cifar10 --file_format=array_record [--data_dir=DIR]
Command (sized for one accelerator; runs, slowly, on a CPU):
  python launch.py --config=experiments/vit_cifar10.py --workdir=runs/vit_cifar10 [--config.data.data_dir=DIR]

Arguments after the file name: `smoke` (tiny model, 30 steps; still needs the prepared data).

The usual small-data recipe: patches of 4x4 pixels (64 plus the class token), 7 pre-LN
layers of width 256; AdamW (weight decay 0.05), linear warmup (5 epochs) then cosine
decay over 200 epochs, label smoothing 0.1, random crops of the image padded by 4 pixels,
horizontal flips, mixup (α = 0.2); no RandAugment. Trained on the first 90% of the
training split (45,000 images); the last 10% is the validation split and the catalog
test split is the test split.
Expected result and time: to be measured.
"""

import ml_collections

EPOCH_STEPS = 45_000 // 128


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = [a for a in (arg or "").split(",") if a]
    if any(a != "smoke" for a in args):
        raise ValueError(f"vit_cifar10.py: unknown argument(s) {[a for a in args if a != 'smoke']}; known: smoke")

    c = ml_collections.ConfigDict()
    c.task = "classification"
    c.seed = 0
    c.total_steps = 200 * EPOCH_STEPS
    c.batch_size = 128
    c.log_every_steps = 100
    c.eval_every_steps = 10 * EPOCH_STEPS
    c.checkpoint_every_steps = 10 * EPOCH_STEPS
    c.keep_checkpoints = 2  # the rolling set; the best checkpoint is kept apart
    c.best_metric = "accuracy"  # validation metric that picks --checkpoint=best
    c.final_split = "test"
    c.micro_batches = 1  # gradient accumulation: each batch in this many slices, one at a time
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices along the data-parallel axis; -1 = all remaining
    c.mesh.fsdp = 1  # devices that parameters and optimizer state are sharded over

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"
    c.data.data_dir = ""  # TFDS data directory; empty = TFDS's default (~/tensorflow_datasets)
    c.data.crop_padding = 4
    c.data.flip = True
    c.data.mixup_alpha = 0.2

    c.model = ml_collections.ConfigDict()
    c.model.name = "vit"
    c.model.variant = ""  # custom sizes below
    c.model.patch_size = 4
    c.model.d_model = 256
    c.model.num_layers = 7
    c.model.num_heads = 8
    c.model.d_ff = 512
    c.model.dropout_rate = 0.1
    c.model.attention_dropout_rate = 0.0
    c.model.pool = "token"  # or "gap"
    c.model.image_size = 32
    c.model.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU
    c.model.attention_impl = ""  # "" = XLA's choice; "cudnn" for flash attention on GPU

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.05
    c.optimizer.schedule = "cosine"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 5 * EPOCH_STEPS
    c.optimizer.label_smoothing = 0.1
    c.optimizer.grad_clip_norm = 1.0

    if "smoke" in args:
        c.model.update(d_model=16, num_layers=1, num_heads=2, d_ff=32)
        c.batch_size = 32
        c.total_steps = 30
        c.log_every_steps = 10
        c.eval_every_steps = 15
        c.checkpoint_every_steps = 15
        c.optimizer.warmup_steps = 5
    return c
