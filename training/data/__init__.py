"""Procedural corpus of rigged, animated creatures (stage ``data`` of ``training/run.py``).

Body plans (:mod:`.body_plans`) -> closed surfaces (:mod:`.surface`) -> bone-heat skinning
(:mod:`.skinning`) -> motion clips (:mod:`.motion`) -> records and shards (:mod:`.corpus`,
:mod:`.generate`); :mod:`.gallery` and :mod:`.stats` show and measure the result.
See ``docs/corpus.md``.
"""

from .corpus import Corpus, CorpusConfig, CorpusError, CreatureRecord, generate_creature

__all__ = ["Corpus", "CorpusConfig", "CorpusError", "CreatureRecord", "generate_creature"]
