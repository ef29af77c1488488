"""Sparse token prediction for masked-language-model pre-training (Izsak et al., EMNLP 2021).

A BERT MLM spends most of a small model's training step in its output head: the decoder
(``hidden x vocab``, 30522 columns for bert-base-uncased) and the softmax over the
vocabulary run on every position of every sequence, although only the ~15 % of positions
that were masked have a label.  :class:`SparseBertForMaskedLM` runs the encoder as usual and
the MLM head (transform + tied decoder) on the hidden states of the predicted positions only.
The loss is the same number the dense head gives (cross-entropy averaged over the predicted
tokens); the compute and memory of the head shrink by ``seq_len / predictions`` (128 / 20).

It *is* a :class:`transformers.BertForMaskedLM`: same modules, same parameters, same
state-dict keys, same tied decoder.  Only ``forward`` (and the ``architectures`` entry that
``save_pretrained`` writes) differ, so a saved model loads in plain transformers
(``BertForMaskedLM.from_pretrained`` / ``AutoModelForMaskedLM.from_pretrained``) with no
missing or unexpected keys and computes the same dense logits there.

``forward`` takes one of three label formats:

* ``mlm_positions`` [B, P] + ``mlm_labels`` [B, P] -- the collated pre-training format: the
  positions of the predicted tokens in each row and their target ids; a row with fewer than
  ``P`` predictions is padded with position 0 and label -100 (padding slots are skipped);
* ``labels`` [B, L] -- the standard Hugging Face format (-100 where nothing is predicted);
  the same sparse computation on the positions where ``labels != -100``;
* neither -- ``BertForMaskedLM.forward`` unchanged: logits [B, L, V] for every position.

In the two sparse cases ``logits`` of the returned ``MaskedLMOutput`` are **per predicted
token**: a [M, V] tensor (M = number of labels that are not -100), one row per predicted
token in row-major order of (batch row, slot) -- for ``labels`` [B, L], (batch row,
position).  :func:`sparse_targets` gives the [M] target ids in that same order, so an
evaluator can compute accuracy and summed loss from ``out.logits`` and
``sparse_targets(labels)``.  ``loss`` is float32 also under bf16 autocast (the logits are cast
before the cross-entropy).

The gather is index arithmetic on tensors (no Python loop over rows), and ``forward`` is a
plain differentiable function of the parameters (no custom autograd), so DDP and DeepSpeed
wrappers see an ordinary module; a batch with nothing to predict gives a zero loss whose graph
still reaches every parameter (zero gradients), so no rank of a DDP job stalls on it.
Selecting the valid positions makes the number of rows M data-dependent: on a GPU that costs
one host synchronisation per forward.  Positions must lie in [0, L) where the label is not -100
(padding slots are never read).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM
from transformers.modeling_outputs import MaskedLMOutput

IGNORE_INDEX = -100
#: What ``save_pretrained`` writes as ``architectures`` (plain transformers knows this class).
PLAIN_ARCHITECTURE = "BertForMaskedLM"


def sparse_targets(mlm_labels: torch.Tensor) -> torch.Tensor:
    """The target ids of the predicted tokens, [M], in the row order of the sparse ``logits``.

    Works for both label formats (``mlm_labels`` [B, P] and ``labels`` [B, L]): the labels that
    are not -100, in row-major order.
    """
    return mlm_labels[mlm_labels.ne(IGNORE_INDEX)].long()


def _flat_indices(mlm_positions: torch.Tensor | None, labels: torch.Tensor | None, seq_len: int
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(indices into the flattened [B*L] sequence, target ids or None), both [M], row-major.

    With ``mlm_positions`` [B, P], ``labels`` are its per-slot labels [B, P] (None: every slot
    is predicted); without, ``labels`` are per-position labels [B, L].
    """
    if mlm_positions is None:
        flat_labels = labels.reshape(-1)
        index = flat_labels.ne(IGNORE_INDEX).nonzero().squeeze(1)
        return index, flat_labels.index_select(0, index).long()
    if mlm_positions.dim() != 2 or (labels is not None and mlm_positions.shape != labels.shape):
        raise ValueError(f"mlm_positions {tuple(mlm_positions.shape)} and mlm_labels "
                         f"{None if labels is None else tuple(labels.shape)} must both be [batch, predictions]")
    rows = torch.arange(mlm_positions.shape[0], device=mlm_positions.device).unsqueeze(1)
    flat = (rows * seq_len + mlm_positions.long()).reshape(-1)
    if labels is None:
        return flat, None
    flat_labels = labels.reshape(-1)
    keep = flat_labels.ne(IGNORE_INDEX).nonzero().squeeze(1)
    return flat.index_select(0, keep), flat_labels.index_select(0, keep).long()


class SparseBertForMaskedLM(BertForMaskedLM):
    """``BertForMaskedLM`` whose MLM head runs only on the predicted positions (see module doc)."""

    sparse_targets = staticmethod(sparse_targets)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mlm_positions: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MaskedLMOutput | tuple:
        """MLM forward; sparse (logits [M, V], see :func:`sparse_targets`) when labels are given.

        ``mlm_positions`` [B, P] / ``mlm_labels`` [B, P]: predicted positions and their target
        ids (padding: position 0, label -100).  ``labels`` [B, L]: the standard format.
        ``mlm_positions`` without ``mlm_labels``: logits at every given slot ([B*P, V]), no
        loss.  Neither: the dense ``BertForMaskedLM.forward`` (logits [B, L, V]).
        """
        if mlm_labels is not None and mlm_positions is None:
            raise ValueError("mlm_labels needs mlm_positions (the positions the labels belong to)")
        if labels is not None and mlm_positions is not None:
            raise ValueError("give either labels [B, L] or mlm_positions + mlm_labels [B, P], not both")
        if labels is None and mlm_positions is None:
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                  position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
            return out.to_tuple() if return_dict is False else out

        if mlm_positions is not None and not kwargs and self._last_layer_sparse_ok():
            # The last layer only at the predicted slots (see _last_layer_at): [B*P, H] -> [M, H].
            hidden_in, mask = self._encode_but_last(input_ids, attention_mask, token_type_ids, position_ids,
                                                    inputs_embeds)
            batch, seq_len, hidden = hidden_in.shape
            if mlm_positions.dim() != 2 or (mlm_labels is not None and mlm_positions.shape != mlm_labels.shape):
                raise ValueError(f"mlm_positions {tuple(mlm_positions.shape)} and mlm_labels "
                                 f"{None if mlm_labels is None else tuple(mlm_labels.shape)} must both be "
                                 f"[batch, predictions]")
            at = self._last_layer_at(hidden_in, mask, mlm_positions)  # [B, P, H]
            flat = at.reshape(-1, hidden)
            targets = None
            if mlm_labels is not None:
                slot_labels = mlm_labels.reshape(-1)
                keep = slot_labels.ne(IGNORE_INDEX).nonzero().squeeze(1)
                flat, targets = flat.index_select(0, keep), slot_labels.index_select(0, keep).long()
            selected = flat
            outputs = MaskedLMOutput()  # no hidden states / attentions were asked for
        else:
            outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
            sequence_output = outputs[0]  # [B, L, H]
            batch, seq_len, hidden = sequence_output.shape
            if labels is not None and labels.shape != (batch, seq_len):
                raise ValueError(f"labels {tuple(labels.shape)} must be [batch, seq_len] = {(batch, seq_len)}")
            index, targets = _flat_indices(mlm_positions, labels if labels is not None else mlm_labels, seq_len)
            selected = sequence_output.reshape(batch * seq_len, hidden).index_select(0, index)  # [M, H]
        logits = self.cls(selected)  # [M, V]
        loss = None
        if targets is not None:
            if targets.numel():
                loss = F.cross_entropy(logits.float(), targets)
            else:  # nothing to predict: a zero that still reaches every head parameter
                loss = logits.float().sum() * 0.0
        out = MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                             attentions=outputs.attentions)
        return out.to_tuple() if return_dict is False else out

    # ---- the last encoder layer at the predicted positions only ----
    #
    # Only the predicted tokens' final hidden states reach the loss.  In the last layer every
    # position still serves as a key and a value (the attention of a predicted token reads the
    # whole row), but its query, the attention output projection, both LayerNorms and the FFN
    # are needed at the P predicted slots only: P / L of that layer's work (20 / 128).  The
    # arithmetic per slot is the dense layer's, through the same modules (their hooks still
    # run: EarlyBERT's slimming coefficients, super tickets' gates) and the same attention
    # kernel, so the loss is the dense head's loss to float rounding.

    def _last_layer_sparse_ok(self) -> bool:
        config, bert = self.config, self.bert
        sa = bert.encoder.layer[-1].attention.self if len(bert.encoder.layer) else None
        return (sa is not None and not config.is_decoder and not getattr(config, "add_cross_attention", False)
                and config._attn_implementation in ("eager", "sdpa") and hasattr(bert, "_create_attention_masks")
                and getattr(getattr(sa, "query", None), "out_features", 0) > 0  # a compacted layer may keep no head
                and not getattr(bert, "gradient_checkpointing", False))

    def _encode_but_last(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        """Embeddings and every encoder layer but the last, as ``BertModel.forward`` runs them:
        ``(hidden states [B, L, H] entering the last layer, the attention mask it builds)``."""
        bert = self.bert
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        emb = bert.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids,
                              inputs_embeds=inputs_embeds)
        mask, _ = bert._create_attention_masks(attention_mask=attention_mask, encoder_attention_mask=None,
                                               embedding_output=emb, encoder_hidden_states=None, cache=None)
        hidden = emb
        for layer in bert.encoder.layer[:-1]:
            hidden = layer(hidden, mask)
        return hidden, mask

    def _last_layer_at(self, hidden: torch.Tensor, mask, positions: torch.Tensor) -> torch.Tensor:
        """The last encoder layer's output at ``positions`` [B, P] only: [B, P, H]."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.bert.modeling_bert import eager_attention_forward

        layer = self.bert.encoder.layer[-1]
        sa = layer.attention.self
        batch, seq_len, hidden_size = hidden.shape
        n_slots = positions.shape[1]
        head = sa.attention_head_size
        idx = positions.long()
        at = torch.gather(hidden, 1, idx.unsqueeze(-1).expand(batch, n_slots, hidden_size))  # [B, P, H]
        q = sa.query(at).view(batch, n_slots, -1, head).transpose(1, 2)
        k = sa.key(hidden).view(batch, seq_len, -1, head).transpose(1, 2)
        v = sa.value(hidden).view(batch, seq_len, -1, head).transpose(1, 2)
        if mask is not None and mask.dim() == 4 and mask.shape[-2] != 1:  # per-query rows: keep the slots' rows
            mask = mask.expand(batch, mask.shape[1], seq_len, mask.shape[-1])
            mask = torch.gather(mask, 2, idx[:, None, :, None].expand(batch, mask.shape[1], n_slots, mask.shape[-1]))
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        context, _ = attend(sa, q, k, v, mask, dropout=sa.dropout.p if sa.training else 0.0, scaling=sa.scaling)
        attention_out = layer.attention.output(context.reshape(batch, n_slots, -1), at)
        return layer.output(layer.intermediate(attention_out), attention_out)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, is_main_process: bool = True,
                        **kwargs: Any) -> Any:
        """``PreTrainedModel.save_pretrained``, with ``architectures: ["BertForMaskedLM"]`` in
        config.json, so tools that read that field build the plain class (the weights are the
        same).  With ``push_to_hub`` the uploaded config still names this class."""
        result = super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        self.config.architectures = [PLAIN_ARCHITECTURE]
        should_save = getattr(self, "should_save_on_this_rank", None)
        if should_save(is_main_process) if should_save is not None else is_main_process:
            self.config.save_pretrained(save_directory)
        return result


def from_masked_lm(model: BertForMaskedLM) -> SparseBertForMaskedLM:
    """Turn a ``BertForMaskedLM`` (built, loaded or compacted) into a
    :class:`SparseBertForMaskedLM`, in place, and return it.

    The subclass adds no module, parameter or attribute, only methods, so this reassigns
    ``model.__class__``: no copy, the same parameter tensors (the decoder stays tied to the word
    embeddings), hooks and config.  Call it before wrapping the model (DDP, DeepSpeed).
    A model that already is sparse is returned as it is; anything that is not a
    ``BertForMaskedLM`` raises ``TypeError``.
    """
    if isinstance(model, SparseBertForMaskedLM):
        return model
    if type(model) is not BertForMaskedLM:
        raise TypeError(f"from_masked_lm expects a transformers BertForMaskedLM, got {type(model).__name__}")
    model.__class__ = SparseBertForMaskedLM
    return model


def build_pretrain_model(cfg: Any, tokenizer: Any) -> SparseBertForMaskedLM:
    """A BertForMaskedLM with sparse token prediction: random weights of ``model``'s geometry
    (``pretrain.init=scratch``) or ``model.name_or_path``'s weights (``pretrained``), from a
    ``RunConfig``.  Seed the process first: fresh weights are drawn here."""
    import copy

    from transformers import AutoConfig

    from bert_ticket_cli.errors import UserError
    from bert_ticket_cli.model.build import _check_source, _wrap_load_error, build_model

    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    overrides = dict(cfg.model.config or {})
    if "vocab_size" in overrides and int(overrides["vocab_size"]) != vocab:
        raise UserError(f"model.config.vocab_size={overrides['vocab_size']} but the tokenizer has {vocab} tokens: "
                        f"drop model.config.vocab_size")
    if cfg.pretrain.init == "pretrained":
        model = build_model(cfg.model, kind="mlm", num_labels=0)
        if model.config.vocab_size != vocab:
            raise UserError(f"{cfg.model.name_or_path} has a {model.config.vocab_size}-token vocabulary but the "
                            f"prepared data's tokenizer has {vocab}: prepare with pretrain.data.tokenizer=model")
    else:
        overrides.update(vocab_size=vocab, pad_token_id=pad)
        if cfg.model.name_or_path:  # its geometry, fresh weights
            _check_source(cfg.model.name_or_path, "model config")
            try:
                config = AutoConfig.from_pretrained(cfg.model.name_or_path, **overrides)
            except (OSError, ValueError) as exc:
                raise _wrap_load_error(exc, cfg.model.name_or_path, "model config") from None
            config._attn_implementation = cfg.model.attn_implementation
            model = BertForMaskedLM(config)
        else:
            spec = copy.deepcopy(cfg.model)
            spec.config = overrides
            model = build_model(spec, kind="mlm", num_labels=0)
    if model.config.max_position_embeddings < cfg.pretrain.data.seq_length:
        raise UserError(f"the model has {model.config.max_position_embeddings} positions, fewer than "
                        f"pretrain.data.seq_length={cfg.pretrain.data.seq_length}: raise "
                        f"model.config.max_position_embeddings")
    return from_masked_lm(model)
