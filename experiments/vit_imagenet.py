r"""ViT-B/16 trained from scratch on ImageNet (ILSVRC 2012) with the ViT paper's recipe.

Prepare the data once (the images are a manual download; the preparation step, only it,
needs TensorFlow): put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from
https://image-net.org into MANUAL_DIR, then
  pip install tensorflow && tfds build imagenet2012 --file_format=array_record \
      --manual_dir=MANUAL_DIR [--data_dir=DIR]
Command (for a multi-accelerator host; the batch is split over all devices):
  python launch.py --config=experiments/vit_imagenet.py --workdir=runs/vit_imagenet [--config.data.data_dir=DIR]

Arguments after the file name: `smoke` (tiny model on 32x32 crops, 30 steps; still
needs the prepared data).

Dosovitskiy et al. (2021), Table 3 (ImageNet, ViT-*) and §4.1: batch 4096, Adam (β₁ 0.9,
β₂ 0.999) with decoupled weight decay 0.3, learning rate 3·10⁻³ after a linear warmup of
10k steps then cosine decay, 300 epochs, dropout 0.1, 224x224 images, gradient clipping
at global norm 1; inception crops and horizontal flips. Trained on the first 99% of
the training split (300 epochs ≈ 92,700 steps); the last 1% (12,812 images) is the
validation split and the catalog validation split (50,000 images) is the test split.
Expected result: the paper reports 77.9% top-1 for ViT-B/16 trained on ImageNet alone
(after fine-tuning at 384x384); this run, at 224x224, is to be measured.
"""

from ml_transformer import run_settings

IMAGE_SIZE = 224
EPOCH_STEPS = 1_268_355 // 4096  # the first 99% of the 1,281,167 training images


def get_config(arg: str | None = None):
    args = run_settings.arguments(arg, "vit_imagenet.py")
    c = run_settings.run("classification", total_steps=300 * EPOCH_STEPS, batch_size=4096, best_metric="accuracy",
                         eval_every_steps=5000, checkpoint_every_steps=5000, keep_checkpoints=3)

    c.data = {}
    c.data.name = "imagenet2012"
    c.data.data_dir = ""  # TFDS data directory; empty = TFDS's default (~/tensorflow_datasets)
    c.data.image_size = IMAGE_SIZE
    c.data.crop_min_area = 0.08  # inception crop: 8%..100% of the image area
    c.data.flip = True
    c.data.mixup_alpha = 0.0

    c.model = {}
    c.model.name = "vit"
    c.model.variant = "B/16"  # sizes from the variant; nonzero fields below override them
    c.model.patch_size = 0
    c.model.d_model = 0
    c.model.num_layers = 0
    c.model.num_heads = 0
    c.model.d_ff = 0
    c.model.dropout_rate = 0.1
    c.model.attention_dropout_rate = 0.0
    c.model.pool = "token"
    c.model.image_size = IMAGE_SIZE
    c.model.dtype = "bfloat16"  # compute dtype; parameters stay float32
    c.model.attention_impl = ""  # "" = XLA's choice; "cudnn" for flash attention on GPU

    c.optimizer = run_settings.optimizer(learning_rate=3e-3, schedule="cosine", warmup_steps=10_000, name="adamw",
                                         weight_decay=0.3)

    if "smoke" in args:
        c.model.update(variant="", patch_size=8, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                       image_size=32, dtype="float32")
        c.data.image_size = 32
        c.batch_size = 8
        run_settings.smoke(c)
    return c
