r"""Text classifier on IMDB movie reviews (positive or negative), the lecture notes' model.

Command (sized for a GPU):
  python launch.py --config=experiments/textcls_imdb.py --workdir=runs/textcls_imdb

Arguments after the file name: `smoke` (tiny model, 2,000 pieces, 64 tokens, 30 steps:
checks the pipeline end to end).

Data: the TFDS catalog's `imdb_reviews` (prepare it once with network access, e.g.
`python -c "import tensorflow_datasets as tfds; tfds.data_source('imdb_reviews')"`): its
`test` split (25,000 reviews) is the test split; the last 10% of its `train` split is held
out as validation (2,500 reviews), the first 90% trains (22,500). The model, as in the
notes: a 20,000-piece vocabulary, reviews truncated to 600 tokens, embedding 256, one
encoder layer with 2 heads and feed-forward 32, global max pooling, dropout 0.5, one
sigmoid logit.

Expected result and time: to be measured.
"""

from ml_transformer import run_settings


def get_config(arg: str | None = None):
    args = run_settings.arguments(arg, "textcls_imdb.py")
    # 4,000 steps: about 5.7 epochs of 22,500 reviews
    c = run_settings.run("classification", total_steps=4000, batch_size=32, best_metric="accuracy",
                         checkpoint_every_steps=500, keep_checkpoints=3)

    c.data = {}
    c.data.name = "imdb_reviews"
    c.data.data_dir = ""  # TFDS data directory; empty = TFDS's default (~/tensorflow_datasets)
    c.data.vocab_size = 20000  # SentencePiece pieces, trained on the training reviews
    c.data.max_len = 600  # reviews are truncated to this many tokens (keeping the start)
    c.data.batch_tokens = 0  # 0: batch_size rows of max_len tokens; > 0: length-bucketed batches

    c.model = {}
    c.model.name = "text_classifier"
    c.model.vocab_size = c.data.get_ref("vocab_size")
    c.model.max_len = c.data.get_ref("max_len")
    c.model.d_model = 256
    c.model.num_heads = 2
    c.model.d_ff = 32
    c.model.num_layers = 1
    c.model.dropout_rate = 0.5  # on the pooled features
    c.model.encoder_dropout_rate = 0.0  # inside the encoder (the notes have none)
    c.model.head = "sigmoid"  # or "softmax"
    c.model.pre_ln = False
    c.model.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU
    c.model.attention_impl = ""  # "" = XLA's choice; "cudnn" for flash attention on GPU

    c.optimizer = run_settings.optimizer(learning_rate=1e-3, schedule="cosine", warmup_steps=200)

    if "smoke" in args:
        c.model.update(d_model=32, num_heads=2, d_ff=32)
        c.data.vocab_size = 2000
        c.data.max_len = 64
        run_settings.smoke(c)
    return c
