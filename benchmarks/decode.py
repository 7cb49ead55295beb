r"""Decoding speed: translation (greedy and beam search) or a language model's sampling,
each with the KV cache and without.

Translation, of a trained model:
  python benchmarks/decode.py --config=experiments/translate_bible.py --workdir=runs/translate_bible \
      [--split=test] [--count=0] [--beam_size=4] [--alpha=1.0] [--uncached_count=64] [--config.KEY=VALUE ...]

Restores the run's latest checkpoint and translates the first `--count` sentences of
`--split` (0: all) as evaluation does (batches of `batch_size` sentences, longest first),
greedily and with beam search (`--beam_size`; `--alpha`, of the config's length penalty form): seconds,
sentences/s and output tokens/s, compilation included, and how many shapes each search
compiled for (or loaded from the compilation cache on disk that launch.py also keeps;
`JAX_COMPILATION_CACHE_DIR=$(mktemp -d)` measures a first run). Then, side by side on the
first `--uncached_count` sentences, the same searches with the cache and recomputing the
decoder over the whole prefix at every step: the cache's speedup.

Language model sampling:
  python benchmarks/decode.py --config=experiments/lm_bible.py [--count=8] [--new_tokens=256] \
      [--prompt_tokens=16]

Samples `--new_tokens` tokens (EOS excluded, so that every sequence runs to the end) after
`--count` random prompts of `--prompt_tokens` tokens with the config's model (random
weights: the speed does not depend on them; its context widened to hold prompt and
continuation), with the cache and recomputing the whole sequence at every step, both
compiled first: seconds, generated tokens/s, and the cache's speedup.
"""

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ml_transformer import host_memory, main as ml_transformer_main, sharding
from ml_transformer.data.tokenizer import EOS_ID
from ml_transformer.tasks import language_model
from ml_transformer.tasks.generation import left_padded, sample_tokens
from ml_transformer.tasks.translation import TranslationTask
from ml_transformer.train import restore

config_flags.DEFINE_config_file("config", "experiments/translate_bible.py", "The run's experiment config.")
flags.DEFINE_string("workdir", None, "Workdir of a trained translation run.")
flags.DEFINE_string("split", "test", "Split whose sources are translated.")
flags.DEFINE_integer("count", 0, "Sentences translated (0: all); prompts sampled from (0: 8).")
flags.DEFINE_integer("beam_size", 4, "Beam size of the beam search.")
flags.DEFINE_float("alpha", 1.0, "Length penalty of the beam search.")
flags.DEFINE_integer("uncached_count", 64, "Sentences translated with and without the cache (0: skip).")
flags.DEFINE_integer("new_tokens", 256, "Tokens sampled after each prompt (language models).")
flags.DEFINE_integer("prompt_tokens", 16, "Tokens of each random prompt (language models).")
FLAGS = flags.FLAGS


class Compilations:
    """Counts XLA compilations and the seconds they take, and the programs loaded from the
    persistent compilation cache instead, as JAX reports them."""

    def __init__(self):
        self.count, self.seconds, self.loaded = 0, 0.0, 0
        jax.monitoring.register_event_duration_secs_listener(self._event)
        jax.monitoring.register_event_listener(self._loaded)

    def _event(self, name: str, seconds: float, **_):
        if name.startswith("/jax/core/compile/"):
            self.seconds += seconds
            self.count += name.endswith("backend_compile_duration")

    def _loaded(self, name: str, **_):
        self.loaded += name == "/jax/compilation_cache/cache_hits"


COMPILATIONS = Compilations()


def timed(task, params, sources, beam_size: int, cached: bool = True) -> tuple[float, int, int, float, int]:
    """(seconds, output tokens, compilations, their seconds, programs loaded from the
    compilation cache) of translating `sources`."""
    before = COMPILATIONS.count, COMPILATIONS.seconds, COMPILATIONS.loaded
    start = time.perf_counter()
    outputs = task.search(params, sources, beam_size, FLAGS.alpha, cached=cached)
    seconds = time.perf_counter() - start
    return (seconds, sum(len(ids) for ids in outputs), COMPILATIONS.count - before[0],
            COMPILATIONS.seconds - before[1], COMPILATIONS.loaded - before[2])


def line(name: str, count: int, seconds: float, tokens: int, compiled: int, compiling: float, loaded: int) -> str:
    return (f"{name}: {count} sentences in {seconds:.1f} s ({count / seconds:.1f} sentences/s, "
            f"{tokens / seconds:,.0f} tokens/s); compiling {compiled} shapes"
            + (f" ({loaded} of them loaded from the compilation cache)" if loaded else "")
            + f": {compiling:.1f} s, summed over the threads that decode side by side")


def main(_):
    host_memory.keep_freed_memory()  # as launch.py does
    ml_transformer_main.use_compilation_cache()
    config = FLAGS.config
    if config.task == "language_model":
        return sampling(config)
    if config.task != "translation" or not FLAGS.workdir:
        sys.exit("error: measures a translation run (--workdir=) or a language model's sampling "
                 f"(got config.task={config.task!r})")
    mesh = sharding.mesh_from_config(config)
    task = TranslationTask(config, FLAGS.workdir, mesh)
    restored = restore.restore_params(task, config, FLAGS.workdir, mesh)
    sources = task.encoded(FLAGS.split)[0]
    sources = sources[: FLAGS.count or len(sources)]
    print(f"step {restored.step}, {FLAGS.split}: {len(sources)} sentences, {jax.device_count()} device(s)", flush=True)
    searches = [("greedy", 1), (f"beam {FLAGS.beam_size}", FLAGS.beam_size)]
    for name, beam_size in searches:
        print(line(name, len(sources), *timed(task, restored.params, sources, beam_size)), flush=True)
    if FLAGS.uncached_count:
        few = sources[: FLAGS.uncached_count]
        for name, beam_size in searches:
            for cached in (True, False):  # compiled first, then timed
                timed(task, restored.params, few, beam_size, cached)
            with_cache, without = (timed(task, restored.params, few, beam_size, cached)[0] for cached in (True, False))
            print(f"{name}, {len(few)} sentences: {with_cache:.2f} s with the cache, {without:.2f} s recomputing "
                  f"the prefix ({without / with_cache:.1f}x)", flush=True)


def sampling(config) -> None:
    """Cached against uncached sampling of the config's language model, side by side."""
    count, new, length = FLAGS.count or 8, FLAGS.new_tokens, FLAGS.prompt_tokens
    config.model.max_len = max(config.model.max_len, length + new)
    vocab_size = config.data.vocab_size
    model = language_model.decoder_only(config, vocab_size)
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    rng = np.random.default_rng(0)
    prompts = left_padded([rng.integers(EOS_ID + 1, vocab_size, size=length) for _ in range(count)], count, length)
    sample = jax.jit(functools.partial(sample_tokens, model, eos_id=EOS_ID, max_new_tokens=new + 1, temperature=1.0,
                                       allowed=np.arange(vocab_size) != EOS_ID), static_argnames="cached")
    seconds = {}
    for cached in (True, False):
        jax.block_until_ready(sample(params, prompts, jax.random.key(0), cached=cached))  # compiled
        start = time.perf_counter()
        tokens = jax.block_until_ready(sample(params, prompts, jax.random.key(1), cached=cached))
        seconds[cached] = time.perf_counter() - start
    generated = int(np.count_nonzero(tokens)) - count  # the EOS closing each sequence aside
    print(f"sampling {new} tokens after {count} prompts of {length}: {seconds[True]:.2f} s with the cache "
          f"({generated / seconds[True]:,.0f} tokens/s), {seconds[False]:.2f} s recomputing the sequence "
          f"({generated / seconds[False]:,.0f} tokens/s): {seconds[False] / seconds[True]:.1f}x", flush=True)


if __name__ == "__main__":
    app.run(main)
