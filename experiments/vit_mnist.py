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

from ml_transformer import run_settings


def get_config(arg: str | None = None):
    args = run_settings.arguments(arg, "vit_mnist.py")
    c = run_settings.run("classification", total_steps=10_000, batch_size=128, best_metric="accuracy",
                         eval_every_steps=2000, checkpoint_every_steps=2000)

    c.data = {}
    c.data.name = "mnist"
    c.data.data_dir = ""  # TFDS data directory; empty = TFDS's default (~/tensorflow_datasets)
    c.data.crop_padding = 2  # random translations of up to ±2 pixels
    c.data.flip = False
    c.data.mixup_alpha = 0.0

    c.model = {}
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

    c.optimizer = run_settings.optimizer(learning_rate=1e-3, schedule="cosine", warmup_steps=500, name="adamw",
                                         weight_decay=0.05, label_smoothing=0.1)

    if "smoke" in args:
        c.model.update(d_model=16, num_layers=1, num_heads=2, d_ff=32)
        c.batch_size = 32
        run_settings.smoke(c)
    return c
