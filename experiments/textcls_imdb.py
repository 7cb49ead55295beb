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

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = [a for a in (arg or "").split(",") if a]
    if any(a != "smoke" for a in args):
        raise ValueError(f"textcls_imdb.py: unknown argument(s) {[a for a in args if a != 'smoke']}; known: smoke")

    c = ml_collections.ConfigDict()
    c.task = "classification"
    c.seed = 0
    c.total_steps = 4000  # about 5.7 epochs of 22,500 reviews
    c.batch_size = 32
    c.log_every_steps = 100
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3  # the rolling set; the best checkpoint is kept apart
    c.best_metric = "accuracy"  # validation metric that picks --checkpoint=best
    c.final_split = "test"
    c.micro_batches = 1  # gradient accumulation: each batch in this many slices, one at a time
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices along the data-parallel axis; -1 = all remaining
    c.mesh.fsdp = 1  # devices that parameters and optimizer state are sharded over

    c.data = ml_collections.ConfigDict()
    c.data.name = "imdb_reviews"
    c.data.data_dir = ""  # TFDS data directory; empty = TFDS's default (~/tensorflow_datasets)
    c.data.vocab_size = 20000  # SentencePiece pieces, trained on the training reviews
    c.data.max_len = 600  # reviews are truncated to this many tokens (keeping the start)
    c.data.batch_tokens = 0  # 0: batch_size rows of max_len tokens; > 0: length-bucketed batches

    c.model = ml_collections.ConfigDict()
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

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "cosine"  # linear warmup, then cosine decay to 0
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 200
    c.optimizer.label_smoothing = 0.0
    c.optimizer.grad_clip_norm = 1.0

    if "smoke" in args:
        c.model.update(d_model=32, num_heads=2, d_ff=32)
        c.data.vocab_size = 2000
        c.data.max_len = 64
        c.total_steps = 30
        c.log_every_steps = 10
        c.eval_every_steps = 15
        c.checkpoint_every_steps = 15
        c.optimizer.warmup_steps = 5
    return c
