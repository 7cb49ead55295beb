r"""A decoder-only language model of one Bible translation's verses (embedded data).

Command (the default run):
  python launch.py --config=experiments/lm_bible.py --workdir=runs/lm_bible

Arguments, comma-separated after the file name (e.g. `lm_bible.py:fr,smoke`):
  en (default) | fr | de | ko   the translation: World English Bible, Louis Segond 1910,
                                Elberfelder 1932, Korean Revised Version 1961
  smoke                         tiny model, 30 steps: checks the pipeline end to end

Data: the verses of the translation, split by whole chapters as in translate_bible.py
(train 28,065 / validation 1,537 / test 1,500 verses for en); a SentencePiece vocabulary
trained on the training verses only. Each verse is one sequence.

Model: pre-LN decoder, learned positions, output tied to the embedding, dropout 0.1.
Evaluation: per-token perplexity and bits per character (tokenizer-independent); a full
evaluation samples continuations of `decode.prompts`. Predict continues each input line:
  echo "In the beginning" | python launch.py --config=experiments/lm_bible.py \
      --workdir=runs/lm_bible --mode=predict

Expected result and time (2-core CPU): test 1.303 bits per character (per-token perplexity
34.7) after 3,000 steps, 17 min with the corpus and tokenizer already prepared; the
character 6-gram Kneser-Ney baseline (`python benchmarks/ngram_lm.py`): 1.590.

Sweep (`get_sweep`): peak learning rate 5e-4, 1e-3, 2e-3 x dropout 0 or 0.1, 6 runs.
"""

from ml_transformer import run_settings, sweep

LANGUAGES = ("en", "fr", "de", "ko")


def get_config(arg: str | None = None):
    args = run_settings.arguments(arg, "lm_bible.py", ("smoke",) + LANGUAGES)
    c = run_settings.run("language_model", total_steps=3000, batch_size=64, best_metric="bits_per_char",
                         eval_every_steps=1000, checkpoint_every_steps=1000)  # about 5.4 epochs

    c.data = {}
    c.data.language = next((a for a in args if a in LANGUAGES), "en")
    c.data.data_dir = ""  # TFDS data directory; empty = TFDS's default (~/tensorflow_datasets)
    c.data.vocab_size = 4000  # SentencePiece pieces, trained on the training verses
    c.data.max_len = 128  # training verses longer than this (in pieces, EOS included) are left out
    c.data.batch_tokens = 2048  # padded tokens per training batch (length-bucketed)

    c.model = {}
    c.model.d_model = 256
    c.model.num_heads = 4
    c.model.d_ff = 512
    c.model.num_layers = 4
    c.model.dropout_rate = 0.1
    c.model.attention_dropout_rate = 0.0
    c.model.pre_ln = True
    c.model.position = "learned"  # or "sinusoidal"
    c.model.max_len = 256  # the context: prompt and continuation together
    c.model.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU
    c.model.attention_impl = ""  # "" = XLA's choice; "cudnn" for flash attention on GPU

    c.optimizer = run_settings.optimizer(learning_rate=1e-3, schedule="cosine", warmup_steps=200, name="adamw",
                                         b2=0.98, weight_decay=0.01)

    c.decode = {}
    c.decode.temperature = 0.8  # 0: greedy
    c.decode.top_k = 0  # 0: no top-k cut
    c.decode.top_p = 0.95  # nucleus sampling: the fewest tokens holding this probability
    c.decode.max_new_tokens = 100  # EOS included
    c.decode.num_samples = 1  # continuations per prompt (tab-separated in predict)
    c.decode.seed = 0  # the same seed gives the same samples
    c.decode.prompts = ("In the beginning", "And Jesus said", "The Lord is my shepherd", "Blessed are",
                        "And it came to pass")  # continued after training (in the eval rows)
    c.decode.samples = 5  # rows printed after training

    if "smoke" in args:
        c.model.update(d_model=32, num_heads=2, d_ff=64, num_layers=1)
        c.data.vocab_size = 1000
        c.data.batch_tokens = 1024
        c.data.max_len = 64
        c.decode.max_new_tokens = 20
        run_settings.smoke(c)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    """Peak learning rate x dropout, 6 runs (`smoke`: two learning rates)."""
    if "smoke" in (arg or "").split(","):
        return sweep.product({"optimizer.learning_rate": [1e-3, 2e-3]})
    return sweep.product({"optimizer.learning_rate": [5e-4, 1e-3, 2e-3], "model.dropout_rate": [0.0, 0.1]})
