"""transformers' own `ModelTesterMixin` and `ConfigTester` (of the installed release, fetched from its source
distribution by `scripts/fetch_transformers_tests.sh`) run on HarmoCLIP, as `tests/models/clip/test_modeling_clip.py`
runs them on `CLIPModel`: a model tester with CLIP's tiny geometry, and only the skips CLIP's own test makes, with its
reasons. The export tester stands in for the file the source distribution lacks (`peer_stand_ins/export_tester.py`)."""

from __future__ import annotations

import unittest

import numpy as np
import pytest
import torch
from parameterized import parameterized
from transformers import AutoConfig, AutoModel, CLIPConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING

import transformers_suites
from modeling_harmoclip import HarmoCLIPConfig, HarmoCLIPModel

modeling_common = transformers_suites.load("test_modeling_common")
configuration_common = transformers_suites.load("test_configuration_common")
ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
floats_tensor, ids_tensor = modeling_common.floats_tensor, modeling_common.ids_tensor
random_attention_mask, _config_zero_init = modeling_common.random_attention_mask, modeling_common._config_zero_init
TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION = modeling_common.TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION

pytestmark = pytest.mark.filterwarnings("ignore")


class TowerTester:
    """One tower's geometry and inputs, as CLIP's `CLIPTextModelTester` / `CLIPVisionModelTester` hold them: 2 layers
    of width 32 (4 heads, MLP 37), batch 12."""

    batch_size, hidden_size, num_hidden_layers, num_attention_heads = 12, 32, 2, 4

    def __init__(self, **config: object):
        self.config = dict(
            hidden_size=self.hidden_size,
            projection_dim=32,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=37,
            dropout=0.1,
            attention_dropout=0.1,
            initializer_range=0.02,
            **config,
        )


class TextTowerTester(TowerTester):
    """CLIP's text tester: 7 tokens of a 99-token vocabulary, each row's mask a prefix of ones."""

    seq_length, vocab_size = 7, 99

    def __init__(self):
        super().__init__(vocab_size=self.vocab_size, max_position_embeddings=512)

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        starts = np.random.randint(1, self.seq_length - 1, size=(self.batch_size,))
        for row, start in enumerate(starts):
            attention_mask[row, :start] = 1
            attention_mask[row, start:] = 0
        return self.config, {"input_ids": input_ids, "attention_mask": attention_mask}


class VisionTowerTester(TowerTester):
    """CLIP's vision tester: 30 px images in 2 px patches."""

    image_size, patch_size = 30, 2

    def __init__(self):
        super().__init__(image_size=self.image_size, patch_size=self.patch_size, num_channels=3)

    def prepare_config_and_inputs_for_common(self):
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        return self.config, {"pixel_values": pixel_values}


class HarmoCLIPModelTester:
    """CLIP's `CLIPModelTester`: its two tower testers and a 64-d joint space, HarmoCLIP's default settings."""

    def __init__(self, parent):
        self.parent = parent
        self.text_model_tester, self.vision_model_tester = TextTowerTester(), VisionTowerTester()
        self.batch_size = self.text_model_tester.batch_size  # the batching-equivalence test reads it
        self.is_training = True

    def get_config(self) -> HarmoCLIPConfig:
        clip = CLIPConfig(
            text_config=self.text_model_tester.config, vision_config=self.vision_model_tester.config, projection_dim=64
        )
        return HarmoCLIPConfig.from_clip_config(clip)

    def prepare_config_and_inputs(self):
        _, text = self.text_model_tester.prepare_config_and_inputs_for_common()
        _, vision = self.vision_model_tester.prepare_config_and_inputs_for_common()
        return self.get_config(), text["input_ids"], text["attention_mask"], vision["pixel_values"]

    def create_and_check_model(self, config, input_ids, attention_mask, pixel_values):
        model = HarmoCLIPModel(config).eval()
        with torch.no_grad():
            result = model(input_ids, pixel_values, attention_mask)
        self.parent.assertEqual(result.logits_per_image.shape, (self.batch_size, self.batch_size))
        self.parent.assertEqual(result.logits_per_text.shape, (self.batch_size, self.batch_size))

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask, pixel_values = self.prepare_config_and_inputs()
        inputs_dict = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
            "return_loss": True,
        }
        return config, inputs_dict


class HarmoCLIPModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (HarmoCLIPModel,)
    additional_model_inputs = ["pixel_values"]
    test_resize_embeddings = False
    test_attention_outputs = False
    _is_composite = True

    @classmethod
    def setUpClass(cls):
        # In transformers' MODEL_MAPPING, as CLIP is there (`test_torch_save_load` reads the base class from it), for
        # this class's tests only: a saved HarmoCLIP otherwise loads through its own remote code.
        AutoConfig.register(HarmoCLIPConfig.model_type, HarmoCLIPConfig, exist_ok=True)
        AutoModel.register(HarmoCLIPConfig, HarmoCLIPModel, exist_ok=True)

    @classmethod
    def tearDownClass(cls):
        CONFIG_MAPPING._extra_content.pop(HarmoCLIPConfig.model_type, None)
        MODEL_MAPPING._extra_content.pop(HarmoCLIPConfig, None)

    def setUp(self):
        self.model_tester = HarmoCLIPModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=HarmoCLIPConfig,
            has_text_modality=False,
            common_properties=["projection_dim", "logit_scale_init_value"],
        )

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_config(self):
        self.config_tester.run_common_tests()

    # The skips of CLIP's own `CLIPModelTest`, with its reasons.
    @unittest.skip(reason="Hidden_states is tested in individual model tests")
    def test_hidden_states_output(self):
        pass

    @unittest.skip(reason="Inputs_embeds is tested in individual model tests")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="Retain_grad is tested in individual model tests")
    def test_retain_grad_hidden_states_attentions(self):
        pass

    @unittest.skip(reason="CLIPModel does not have input/output embeddings")
    def test_model_get_set_embeddings(self):
        pass

    def test_sdpa_can_dispatch_on_flash(self):
        self.skipTest(reason="CLIP text tower has two attention masks: `causal_attention_mask` and `attention_mask`")

    def test_sdpa_can_compile_dynamic(self):
        self.skipTest(reason="CLIP model can't be compiled dynamic, error in clip_loss`")

    # As CLIP's: `logit_scale` starts at log(1/0.07), and so does `region_logit_scale` (from the global one).
    def test_initialization(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        configs_no_init = _config_zero_init(config)
        for model_class in self.all_model_classes:
            model = model_class(config=configs_no_init)
            for name, param in model.named_parameters():
                if param.requires_grad:
                    if name in ("logit_scale", "region_logit_scale"):
                        self.assertAlmostEqual(param.data.item(), np.log(1 / 0.07), delta=1e-3, msg=name)
                    else:
                        self.assertIn(((param.data.mean() * 1e9).round() / 1e9).item(), [0.0, 1.0], msg=name)

    @parameterized.expand(TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION)
    def test_eager_matches_sdpa_inference(self, *args):
        return getattr(ModelTesterMixin, self._testMethodName)(self)
