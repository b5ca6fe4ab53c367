"""Names that changed keep working one release, with a FutureWarning saying the new name: the phrase encoded alone
("separate" -> "alone", grounding's "lexeme" -> "token") and the config's dict of recipe settings (`recipe` ->
`recipe_settings`, since a recipe's name is `recipe_name`)."""

from __future__ import annotations

import pytest

from conftest import tiny_harmoclip_config, tiny_processor
from modeling_harmoclip.configuration_harmoclip import HarmoCLIPConfig
from modeling_harmoclip.pipeline_harmoclip import check_phrase_mode, embed_phrases
from training.config import TrainConfig


def test_lexeme_mode_separate_reads_as_alone_with_a_warning(tmp_path) -> None:
    with pytest.warns(FutureWarning, match="`lexeme_mode='separate'` is now spelled 'alone'"):
        config = tiny_harmoclip_config(lexeme_mode="separate")
    assert config.lexeme_mode == "alone"
    config.save_pretrained(tmp_path)  # saved under the new name: the next load warns no more
    assert HarmoCLIPConfig.from_pretrained(tmp_path).lexeme_mode == "alone"
    with pytest.warns(FutureWarning, match="now spelled 'alone'"):
        assert TrainConfig(lexeme_mode="separate").lexeme_mode == "alone"


def test_phrase_mode_lexeme_reads_as_token_with_a_warning(tiny_tokenizer) -> None:
    with pytest.warns(FutureWarning, match="`phrase_mode='lexeme'` is now spelled 'token'"):
        assert check_phrase_mode("lexeme") == "token"
    from conftest import tiny_harmoclip_model

    model, processor = tiny_harmoclip_model(), tiny_processor(tiny_tokenizer)
    caption, spans = "a red circle on grass", [(0, 12), (16, 21)]
    with pytest.warns(FutureWarning):
        old = embed_phrases(model, processor, caption, spans, "lexeme")
    assert old.equal(embed_phrases(model, processor, caption, spans, "token"))
    with pytest.raises(ValueError, match=r"`phrase_mode` must be one of \('token', 'alone'\), got 'words'"):
        check_phrase_mode("words")


def test_config_recipe_is_now_recipe_settings() -> None:
    config = HarmoCLIPConfig.from_recipe("clipself")
    with pytest.warns(FutureWarning, match="`HarmoCLIPConfig.recipe` is now `recipe_settings`"):
        settings = config.recipe
    assert settings == config.recipe_settings and settings["loss_gr_weight"] == 1.0
    assert config.recipe_name == "clipself" and "recipe" not in config.to_dict()
