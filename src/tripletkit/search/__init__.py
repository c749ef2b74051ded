"""Semantic search: fine-tuning a sentence encoder with the triplet loss, with false-negative
filters on mined negatives, FAISS indexes and IR evaluation on BEIR-format data.

Data: :mod:`.data` (BEIR files, the built-in wiki set). Encoders: :mod:`.encoder`
(sentence-transformers, offline) and :mod:`.encodings` (corpus encodings, sharded and cached).
Retrieval: :mod:`.index` (FAISS), :mod:`.indexing` (index folders), :mod:`.retrieval`,
:mod:`.bm25`. Mining: :mod:`.negatives` (corpus negatives and their filters) and
:mod:`.corpus_mining` (mined once per run, or again in training). Runs: :mod:`.config`,
:mod:`.arms` (what each arm knows), :mod:`.training`, :mod:`.evaluation`, :mod:`.metrics`,
:mod:`.stats` and :mod:`.report`. :mod:`.sentence_transformers` brings the mining to
sentence-transformers' own trainer.

The package imports nothing from :mod:`tripletkit.faces`, and the core nothing from it.
"""
