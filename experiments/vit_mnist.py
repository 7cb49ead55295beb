r"""A small Vision Transformer on MNIST (TFDS catalog; patches of 4x4 pixels on 28x28).

Prepare the data once (needs the network and, for this step only, TensorFlow):
  pip install tensorflow && tfds build mnist --file_format=array_record [--data_dir=DIR]
Command:
  python launch.py --config=experiments/vit_mnist.py --workdir=runs/vit_mnist [--config.data.data_dir=DIR]

Arguments after the file name: `smoke` (tiny model, 30 steps; still needs the prepared data).

49 patches plus the class token, 6 pre-LN layers of width 128; AdamW, linear warmup then
cosine decay, label smoothing 0.1, training images shifted by up to two pixels. Trained
on the first 90% of the training split (54,000 images, about 24 epochs); the last 10% is
the validation split and the catalog test split is the test split.
Expected result and time: to be measured.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = [a for a in (arg or "").split(",") if a]
    if any(a != "smoke" for a in args):
        raise ValueError(f"vit_mnist.py: unknown argument(s) {[a for a in args if a != 'smoke']}; known: smoke")

    c = ml_collections.ConfigDict()
    c.task = "classification"
    c.seed = 0
    c.total_steps = 10_000
    c.batch_size = 128
    c.log_every_steps = 100
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
    c.keep_checkpoints = 2  # the rolling set; the best checkpoint is kept apart
    c.best_metric = "accuracy"  # validation metric that picks --checkpoint=best
    c.final_split = "test"
    c.micro_batches = 1  # gradient accumulation: each batch in this many slices, one at a time
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices along the data-parallel axis; -1 = all remaining
    c.mesh.fsdp = 1  # devices that parameters and optimizer state are sharded over

    c.data = ml_collections.ConfigDict()
    c.data.name = "mnist"
    c.data.data_dir = ""  # TFDS data directory; empty = TFDS's default (~/tensorflow_datasets)
    c.data.crop_padding = 2  # random translations of up to ±2 pixels
    c.data.flip = False
    c.data.mixup_alpha = 0.0

    c.model = ml_collections.ConfigDict()
    c.model.name = "vit"
    c.model.variant = ""  # custom sizes below
    c.model.patch_size = 4
    c.model.d_model = 128
    c.model.num_layers = 6
    c.model.num_heads = 4
    c.model.d_ff = 256
    c.model.dropout_rate = 0.1
    c.model.attention_dropout_rate = 0.0
    c.model.pool = "token"  # or "gap"
    c.model.image_size = 28
    c.model.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU
    c.model.attention_impl = ""

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.05
    c.optimizer.schedule = "cosine"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 500
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
