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

from ml_transformer import run_settings

EPOCH_STEPS = 45_000 // 128


def get_config(arg: str | None = None):
    args = run_settings.arguments(arg, "vit_cifar10.py")
    c = run_settings.run("classification", total_steps=200 * EPOCH_STEPS, batch_size=128, best_metric="accuracy",
                         eval_every_steps=10 * EPOCH_STEPS, checkpoint_every_steps=10 * EPOCH_STEPS)

    c.data = {}
    c.data.name = "cifar10"
    c.data.data_dir = ""  # TFDS data directory; empty = TFDS's default (~/tensorflow_datasets)
    c.data.crop_padding = 4
    c.data.flip = True
    c.data.mixup_alpha = 0.2

    c.model = {}
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

    c.optimizer = run_settings.optimizer(learning_rate=1e-3, schedule="cosine", warmup_steps=5 * EPOCH_STEPS,
                                         name="adamw", weight_decay=0.05, label_smoothing=0.1)

    if "smoke" in args:
        c.model.update(d_model=16, num_layers=1, num_heads=2, d_ff=32)
        c.batch_size = 32
        run_settings.smoke(c)
    return c
