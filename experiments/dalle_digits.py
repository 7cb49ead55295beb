r"""A small DALL-E: a decoder-only Transformer drawing 8x8 digits from captions (embedded data).

Command (the default run):
  python launch.py --config=experiments/dalle_digits.py --workdir=runs/dalle_digits

Arguments after the file name: `smoke` (tiny model, 30 steps: checks the pipeline end to end).

Data: scikit-learn's digits (the vit_digits.py split, 1,258 training images). A sequence is
a caption naming the digit in words ("a handwritten seven", "the digit 7", ...: six
phrasings) and the image's 64 pixels as tokens of their own (values 0..16), row by row
(`ml_transformer/data/digit_captions.py`). Only the pixels are scored.

Classifier-free guidance: the caption is dropped with probability `data.caption_dropout`
in training; sampling mixes conditional and unconditional logits with
`decode.guidance_scale`. Predict writes one PNG grid per caption line and prints its path:
  printf 'a handwritten seven\nthe digit 3\n' | python launch.py \
      --config=experiments/dalle_digits.py --workdir=runs/dalle_digits --mode=predict

Expected result and time: see the README's results table; prompt accuracy and diversity
are measured by `python benchmarks/dalle_digits.py --workdir=runs/dalle_digits`.

Sweep (`get_sweep`): caption dropout 0.1 or 0.2 x peak learning rate 1e-3 or 2e-3, 4 runs.
"""

from ml_transformer import run_settings, sweep


def get_config(arg: str | None = None):
    args = run_settings.arguments(arg, "dalle_digits.py")
    c = run_settings.run("text_to_image", total_steps=1200, batch_size=64, best_metric="nll",
                         eval_every_steps=400, checkpoint_every_steps=400)

    c.data = {}
    c.data.data_dir = ""  # TFDS data directory; empty = TFDS's default (~/tensorflow_datasets)
    c.data.caption_dropout = 0.1  # share of training sequences whose caption is left empty

    c.model = {}
    c.model.d_model = 192
    c.model.num_heads = 4
    c.model.d_ff = 768
    c.model.num_layers = 4
    c.model.dropout_rate = 0.1
    c.model.attention_dropout_rate = 0.0
    c.model.pre_ln = True
    c.model.position = "learned"
    c.model.max_len = 74  # caption region (10) and 64 pixels
    c.model.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU
    c.model.attention_impl = ""  # "" = XLA's choice; "cudnn" for flash attention on GPU

    c.optimizer = run_settings.optimizer(learning_rate=1e-3, schedule="cosine", warmup_steps=200, name="adamw",
                                         b2=0.98, weight_decay=0.01)

    c.decode = {}
    c.decode.guidance_scale = 2.0  # 1: the conditional model alone; 0: ignores the caption. Best of 1, 2, 3, 5
    c.decode.temperature = 1.0
    c.decode.top_k = 0
    c.decode.top_p = 1.0
    c.decode.num_samples = 10  # images per caption
    c.decode.seed = 0  # the same seed gives the same images
    c.decode.samples = 1  # rows printed after training

    if "smoke" in args:
        c.model.update(d_model=32, num_heads=2, d_ff=64, num_layers=1)
        c.batch_size = 32
        c.decode.num_samples = 2
        run_settings.smoke(c)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """Caption dropout x peak learning rate, 4 runs (`smoke`: two caption dropouts)."""
    if "smoke" in (arg or "").split(","):
        return sweep.product({"data.caption_dropout": [0.1, 0.3]})
    return sweep.product({"data.caption_dropout": [0.1, 0.2], "optimizer.learning_rate": [1e-3, 2e-3]})
