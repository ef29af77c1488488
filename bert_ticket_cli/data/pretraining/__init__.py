"""Prepared data for academic-budget MLM pre-training (Izsak, Berchansky, Levy, EMNLP 2021).

``bert-ticket pretrain prepare`` turns text into a folder that training memory-maps:

1. **Documents.**  ``pretrain.data.corpus`` lists files, folders (every ``.txt`` / ``.raw`` /
   ``.tokens`` / ``.jsonl`` / ``.json`` inside, recursively, sorted by path) and ``hub:NAME[:CONFIG]``
   datasets (their train split; in ``pretrain.data.validation`` their validation split).  A file
   is parsed by :func:`bert_ticket_cli.data.mlm.read_text_file` (blank-line separated blocks, or one
   document per line; JSON lines with a ``text`` field).  Blank documents are skipped everywhere,
   so they are never counted.  Without ``pretrain.data.validation``, ``round(validation_fraction x
   documents)`` documents (at least one when there are two or more) are held out, drawn by an RNG
   seeded with ``seed``; the training side never sees them, not even the tokenizer trainer.
2. **Tokenizer** (``tokenizer/``).  ``train``: a BERT WordPiece vocabulary learned on the training
   documents; ``model``: the model's tokenizer; else a hub id or a local tokenizer folder.
   Training is made deterministic: the ``tokenizers`` trainer numbers its ``##`` continuation
   pieces in hash-map order, which changes how count ties between merges are broken (so the
   vocabulary could differ from one run to the next).  A first pass (no merges) lists those
   pieces; the real pass gets them, sorted, as placeholders right after the five special tokens,
   so every id and tie is fixed.  The final tokenizer is rebuilt from that vocabulary.
3. **Sentences and packing** (``blocks/``).  A document is cut into sentences at every line break
   and after ``.``, ``!`` or ``?`` (optionally followed by one closing quote or bracket) followed by
   whitespace.  The rule is deliberately simple: an abbreviation such as ``Dr. Smith`` splits a
   sentence in two, which only adds one more place where a block may end.  Sentences are tokenized
   without special tokens and packed greedily, in order, into single-segment blocks
   ``[CLS] body [SEP]`` of at most ``seq_length`` tokens: a sentence that does not fit into the
   current body closes that block and opens the next one; a sentence longer than a whole body
   (``seq_length - 2``) starts a fresh block and is cut into body-sized pieces, its last piece
   staying open for the following sentences.  **Packing runs across document boundaries**, with no
   separator token: a document boundary is just one more sentence boundary, so short documents
   (one-line corpora) do not waste sequence length.  No next-sentence prediction: one segment,
   ``token_type_ids`` all 0.  Blocks keep their true length on disk (no padding).
4. **Static masking** (``train/copy-NN/``, ``validation/``).  ``duplication`` (K) copies of the
   blocks; copy ``k`` masks block ``i`` with :class:`~bert_ticket_cli.data.mlm.Masker` seeded by
   ``example_seed(seed, i, epoch=k)``: ``round(p x length)`` tokens (at least 1, at most
   ``max_predictions``), never special tokens, 80% ``[MASK]`` / 10% random / 10% kept.  The
   validation blocks are masked once with the fixed :data:`~bert_ticket_cli.data.mlm.EVAL_SEED`.
   A row holds ``input_ids`` (masked; ``uint16`` when the vocabulary has at most 65535 entries,
   else ``int32``), ``mlm_positions`` (sorted, ``int16``; ``int32`` beyond 32767 tokens) and
   ``mlm_labels`` (the original ids there, same type as ``input_ids``).
5. **Manifest** (``prepared.json``): the settings and their fingerprint, the tokenizer, counts,
   the parts finished so far and ``"complete": true`` once everything is there.

Every part is written to ``.tmp-<name>`` and renamed into place, then recorded in the manifest
(rewritten atomically), so an interrupted preparation resumes with the missing parts only, and a
complete one is found again at once.  A preparation is a pure function of its inputs and
settings: two folders prepared from the same text hold byte-identical columns.

Limits accepted: each source *file* is read into memory whole (by ``read_text_file``); the corpus
as a whole is streamed, ``DOC_BATCH`` documents at a time, and written to Arrow as it goes.  The
held-out document indices (``validation_fraction`` of all documents) are kept in memory.  A call
with a corpus hashes every source file (about 1 GB/s) to know whether the prepared folder is
current; training with ``pretrain.data.dir`` naming a complete folder and no corpus skips that,
so its start-up does not grow with the corpus.
Masking runs :class:`Masker` once per row (about 10k rows/s per process; ``num_proc`` spreads
it over processes).

Reading: :func:`open_prepared` memory-maps the K copies as one training set;
``engine.batches.StepBatches`` orders them with ``engine.batches.ChunkedOrder`` (a permutation of chunks, then of
the rows inside each chunk, computed lazily), so start-up cost does not depend on the corpus
size and a resumed run needs no sampler state; :class:`PretrainCollator` pads a batch.

Modules, in the order data flows: ``sources.py`` (sources, documents, held-out split, sentences),
``tokenizer.py`` (WordPiece training, named tokenizers), ``packing.py`` (``Packer``),
``shards.py`` (Arrow blocks, static masking, sharded saving), ``manifest.py`` (settings,
fingerprint, ``prepared.json``, part paths), ``prepare.py`` (``prepare``) and ``reading.py``
(``open_prepared``, ``PretrainCollator``).
"""

from bert_ticket_cli.data.pretraining.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    fingerprint_of,
    prepared_dir,
    read_manifest,
    settings_of,
)
from bert_ticket_cli.data.pretraining.packing import Packer, pack_documents
from bert_ticket_cli.data.pretraining.prepare import prepare
from bert_ticket_cli.data.pretraining.reading import Prepared, PretrainCollator, open_prepared
from bert_ticket_cli.data.pretraining.shards import _mask_batch
from bert_ticket_cli.data.pretraining.sources import (
    Source,
    count_documents,
    held_out_documents,
    iter_documents,
    resolve_sources,
    split_sentences,
)
from bert_ticket_cli.data.pretraining.tokenizer import (
    SPECIAL_TOKENS,
    load_named_tokenizer,
    load_saved_tokenizer,
    train_wordpiece,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "SPECIAL_TOKENS",
    "Packer",
    "Prepared",
    "PretrainCollator",
    "Source",
    "_mask_batch",
    "count_documents",
    "fingerprint_of",
    "held_out_documents",
    "iter_documents",
    "load_named_tokenizer",
    "load_saved_tokenizer",
    "open_prepared",
    "pack_documents",
    "prepare",
    "prepared_dir",
    "read_manifest",
    "resolve_sources",
    "settings_of",
    "split_sentences",
    "train_wordpiece",
]
