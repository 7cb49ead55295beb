r"""Encoder-decoder Transformer translating the embedded Bible corpus (English → French).

Command (the default run):
  python launch.py --config=experiments/translate_bible.py --workdir=runs/translate_bible

Arguments, comma-separated after the file name (e.g. `translate_bible.py:en-de,smoke`):
  en-fr (default) | en-de | en-ko   language pair (World English Bible → Louis Segond 1910 /
                                    Elberfelder 1932 / Korean Revised Version 1961)
  smoke                             tiny model, 40 steps: checks the pipeline end to end (< 2 min)
  base                              the paper's base model (d_model 512, 6+6 layers, 100k steps);
                                    for machines with accelerators

Expected result and time: see the README's results table (held-out test BLEU of the
default run on a 2-core CPU, and its wall time).

Sweep (`get_sweep`, `--mode=sweep`): the schedule's warmup steps × its scale
(`optimizer.learning_rate`) around the run's own values, 6 runs: warmup 400 or 800 × scale
0.25, 0.5, 1 (about 3 hours on a 2-core CPU); with `base`, warmup 4000 or 8000 × scale 0.5,
1, 2; with `smoke`, scale 1 or 2.
"""

from ml_collections import config_dict

from ml_transformer import run_settings, sweep

PAIRS = ("en-fr", "en-de", "en-ko")


def get_config(arg: str | None = None):
    args = run_settings.arguments(arg, "translate_bible.py", PAIRS + ("smoke", "base"))
    # batch_size: sentences per evaluation batch; the final split is evaluated with beam search (see decode).
    # A batch decodes until its longest output ends: on CPUs 32 sentences waste fewer steps than 64.
    c = run_settings.run("translation", total_steps=3600, batch_size=32, best_metric="bleu", log_every_steps=50,
                         eval_every_steps=1200, checkpoint_every_steps=1200, keep_checkpoints=3)

    c.data = {}
    c.data.pair = next((a for a in args if a in PAIRS), "en-fr")
    c.data.data_dir = ""  # TFDS data directory; empty = TFDS's default (~/tensorflow_datasets)
    c.data.vocab_size = 4000  # joint SentencePiece vocabulary
    # Share of the training text's characters that get pieces; the rest become <unk>.
    # None: the pair's (data/bible.py), resolved when the run starts: 1.0 for small
    # alphabets (at 0.9995 'ç', 'ü' and the digits were <unk>), 0.9995 for Korean.
    c.data.character_coverage = config_dict.placeholder(float)
    c.data.max_len = 96  # training pairs longer than this (in subword tokens) are dropped
    c.data.batch_tokens = 2048  # padded tokens per side per training batch (length-bucketed)
    c.data.length_multiple = 8  # training batches' lengths: multiples of this (padding: 15% of tokens; at 16, 22%)

    c.model = {}
    c.model.d_model = 256
    c.model.num_heads = 4
    c.model.d_ff = 512
    c.model.num_encoder_layers = 3
    c.model.num_decoder_layers = 3
    c.model.dropout_rate = 0.0  # ~5.4 epochs leave the model under-fitted: dropout only slows it
    c.model.attention_dropout_rate = 0.0
    c.model.pre_ln = True  # False: post-LN, as in the paper
    c.model.position = "sinusoidal"  # or "learned", "none"
    c.model.share_embeddings = True
    c.model.tie_output = True
    c.model.max_len = 256
    c.model.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU
    c.model.attention_impl = ""  # "" = XLA's choice; "cudnn" for flash attention on GPU

    # Schedule "transformer": d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), `learning_rate`
    # its scale: peak 1.6e-3 at step 400. Validation perplexity / greedy BLEU at step 800
    # (character coverage 0.9995): scale 0.5: 19.8 / 9.0; scale 1: 20.2 / 7.7; scale 2:
    # 38.4 / 1.5, every attention head having collapsed onto a single key.
    c.optimizer = run_settings.optimizer(learning_rate=0.5, schedule="transformer", warmup_steps=400, b2=0.98,
                                         eps=1e-9, label_smoothing=0.1, grad_clip_norm=0.0)

    c.decode = {}
    c.decode.beam_size = 4  # of full evaluations and predictions; 1 = greedy
    # Length penalty of beam search: None = chosen on validation data for each evaluated
    # checkpoint (at the end of training): the candidate among greedy and beam search at
    # each of `alphas` with the best BLEU on the first `tune_examples` validation sentences,
    # recorded in DIR/decoding.json. A briefly trained model rates short hypotheses highest
    # (at step 1200 and alpha 0 beam 4's outputs average 3 tokens, greedy's 38), so the
    # penalty that suits it is its own. A number fixes alpha.
    c.decode.alpha = config_dict.placeholder(float)
    c.decode.alphas = (0.6, 0.8, 1.0, 1.2)
    # "power": |Y|^alpha (transformers'); "gnmt": ((5 + |Y|) / 6)^alpha, weaker at the same
    # alpha. Validation BLEU (120 verses, step 1200) at alpha 0.6 / 1.0 / 1.5: power 5.8 /
    # 13.6 / 8.4, gnmt 1.2 / 11.3 / 9.7; greedy 11.1.
    c.decode.length_penalty = "power"
    c.decode.tune_examples = 500
    c.decode.extra_len = 50  # maximum output length = source length + extra_len
    c.decode.min_len = 1  # tokens before EOS at least: no empty translations
    c.decode.eval_examples = 200  # validation sentences decoded (greedy) at each evaluation
    c.decode.final_examples = 0  # sentences decoded (beam) in a full evaluation; 0 = all
    c.decode.samples = 5  # sample translations printed after training
    c.decode.bleu_tokenize = config_dict.placeholder(str)  # None: the pair's, "13a" ("char" for en-ko)

    if "base" in args:
        c.model.update(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6, num_decoder_layers=6,
                       dropout_rate=0.1, pre_ln=False)
        c.data.vocab_size = 16000
        c.data.batch_tokens = 12288
        c.optimizer.learning_rate = 1.0
        c.optimizer.warmup_steps = 4000
        c.total_steps = 100_000
        c.eval_every_steps = 5000
        c.checkpoint_every_steps = 5000
        c.model.dtype = "bfloat16"
        c.batch_size = 64
        c.decode.alpha, c.decode.length_penalty = 0.6, "gnmt"  # the paper's
    if "smoke" in args:
        c.model.update(d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1, num_decoder_layers=1)
        c.data.vocab_size = 1000  # Korean needs ~900 pieces for its characters alone
        c.data.batch_tokens = 512
        c.data.max_len = 48
        c.data.length_multiple = 16  # fewer shapes to compile
        run_settings.smoke(c, total_steps=40, warmup_steps=10)
        c.log_every_steps = 10  # not 40 // 3
        c.decode.eval_examples = 16
        c.decode.final_examples = 64
        c.decode.extra_len = 10
        c.decode.alphas = (0.6, 1.0)
        c.decode.tune_examples = 16
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    args = (arg or "").split(",")
    if "smoke" in args:
        return sweep.product({"optimizer.learning_rate": [1.0, 2.0]})
    if "base" in args:
        return sweep.product({"optimizer.warmup_steps": [4000, 8000], "optimizer.learning_rate": [0.5, 1.0, 2.0]})
    return sweep.product({"optimizer.warmup_steps": [400, 800], "optimizer.learning_rate": [0.25, 0.5, 1.0]})
