"""The text side of HarmoCLIP's region terms: lexeme embeddings (a caption encoded once, each phrase's final token
states mean-pooled, projected; LRC's "text token space") and phrase embeddings (each phrase encoded alone, end-of-text
pooled; RLA's sentence level), called by `HarmoCLIPModel`'s methods.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lexemes_from_states(model: nn.Module, token_states: torch.Tensor, phrase_token_mask: torch.Tensor) -> torch.Tensor:
    """Mean of final token states (B, T, C) over each phrase's tokens (B, N, T) -> (B, N, D) normalised."""
    weights = phrase_token_mask.to(token_states.dtype)
    counts = weights.sum(-1, keepdim=True)
    pooled = weights @ token_states / counts.clamp(min=1)
    lexemes = F.normalize(model.text_projection(pooled).float(), dim=-1, eps=1e-12)
    return lexemes * (counts > 0).to(lexemes.dtype)


def lexemes_separate(model: nn.Module, input_ids: torch.Tensor, phrase_token_mask: torch.Tensor) -> torch.Tensor:
    """Each phrase encoded as its own text: BOS + the phrase's caption tokens + EOS -> (B, N, D) normalised."""
    batch, num_phrases, _ = phrase_token_mask.shape
    linked = phrase_token_mask.any(-1).reshape(-1)
    lexemes = torch.zeros(batch * num_phrases, model.config.projection_dim, device=input_ids.device)
    if not linked.any():
        return lexemes.reshape(batch, num_phrases, -1)
    eos = model.config.text_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    masks = phrase_token_mask.reshape(-1, phrase_token_mask.shape[-1])[linked]
    captions = input_ids.repeat_interleave(num_phrases, dim=0)[linked]
    sequences = [
        torch.cat([caption[:1], caption[mask], caption.new_tensor([eos])]) for caption, mask in zip(captions, masks)
    ]
    longest = max(len(sequence) for sequence in sequences)
    ids = input_ids.new_zeros(len(sequences), longest)
    attention = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = sequence
        attention[row, : len(sequence)] = 1
    embeds = model.get_text_features(input_ids=ids, attention_mask=attention).pooler_output
    lexemes = lexemes.index_copy(0, linked.nonzero(as_tuple=True)[0], F.normalize(embeds.float(), dim=-1, eps=1e-12))
    return lexemes.reshape(batch, num_phrases, -1)


def phrase_embeddings(
    model: nn.Module, input_ids: torch.Tensor, caption_states: torch.Tensor, linked_tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, N, D) lexeme embeddings (LRC's texts: token states of the caption, or the phrases encoded alone in
    "separate" lexeme mode) and, when RLA is weighted, (B, N, D) phrase embeddings (each phrase encoded alone).

    Without `region_text_grad` both are constants to the loss: GC alone then trains the text tower."""
    text_grad = model.config.region_text_grad and torch.is_grad_enabled()
    phrase_embeds = None
    if model.config.lexeme_mode == "separate" or model.config.loss_rla_weight > 0:
        with torch.set_grad_enabled(text_grad):
            phrase_embeds = lexemes_separate(model, input_ids, linked_tokens)
    if model.config.lexeme_mode == "separate":
        lexeme_embeds = phrase_embeds
    else:
        lexeme_embeds = lexemes_from_states(model, caption_states, linked_tokens)
        lexeme_embeds = lexeme_embeds if text_grad else lexeme_embeds.detach()
    return lexeme_embeds, phrase_embeds if model.config.loss_rla_weight > 0 else None


__all__ = ["lexemes_from_states", "lexemes_separate", "phrase_embeddings"]
