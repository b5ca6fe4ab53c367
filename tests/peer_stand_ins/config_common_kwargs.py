"""Stands for `tests/utils/test_configuration_utils.py`'s `config_common_kwargs`: every general `PretrainedConfig`
attribute set to a value other than its default, which `ConfigTester.check_config_arguments_init` expects a config
to keep. (That check returns early for composite configs such as CLIP's and HarmoCLIP's.)"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "dtype": "float16",
    "is_encoder_decoder": True,
    "tie_word_embeddings": False,
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "finetuning_task": "translation",
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
