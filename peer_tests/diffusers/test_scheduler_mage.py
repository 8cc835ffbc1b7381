"""diffusers' SchedulerCommonTest for MageScheduler, adapted the way diffusers adapts it for VQDiffusionScheduler
(copied by peer_tests/run.py to `.peer/diffusers/tests/schedulers/`).

`SchedulerCommonTest` is written for noise schedulers: its samples are float images and its "model output" is
`0.1 * sample`, and it special-cases `VQDiffusionScheduler` (token ids + per-token logits) by class identity. A
masked-token scheduler needs the same treatment, so the tests that build samples are re-stated here with token ids
(B, N), some of them `mask_token_id`, and logits (B, N, codebook_size); everything else is the common test as is.
"""

import inspect
import math
import tempfile
import unittest

import torch

from mage_hf import MageScheduler

from ..testing_utils import torch_device
from .test_schedulers import SchedulerCommonTest

CODEBOOK_SIZE = 32
MASK_TOKEN_ID = 40
NUM_TOKENS = 16


class MageSchedulerTest(SchedulerCommonTest):
    scheduler_classes = (MageScheduler,)
    forward_default_kwargs = (("num_inference_steps", 8),)

    def get_scheduler_config(self, **kwargs):
        config = {"mask_token_id": MASK_TOKEN_ID}
        config.update(**kwargs)
        return config

    def dummy_sample(self, mask_token_id=MASK_TOKEN_ID, batch_size=4):
        sample = torch.randint(0, CODEBOOK_SIZE, (batch_size, NUM_TOKENS), generator=torch.Generator().manual_seed(0))
        sample[:, ::2] = mask_token_id
        return sample

    @property
    def dummy_sample_deter(self):
        assert False

    def dummy_model(self):
        def model(sample, t, *args):
            batch_size, num_tokens = sample.shape
            return torch.rand((batch_size, num_tokens, CODEBOOK_SIZE), generator=torch.Generator().manual_seed(1))

        return model

    def _sample_and_logits(self, scheduler, time_step):
        sample = self.dummy_sample(scheduler.config.mask_token_id)
        return sample, self.dummy_model()(sample, time_step)

    def _step_kwargs(self, scheduler, kwargs):
        if "generator" in inspect.signature(scheduler.step).parameters:
            kwargs["generator"] = torch.manual_seed(0)
        return kwargs

    def check_over_configs(self, time_step=0, **config):
        kwargs = dict(self.forward_default_kwargs)
        num_inference_steps = kwargs.pop("num_inference_steps", None)
        for scheduler_class in self.scheduler_classes:
            scheduler = scheduler_class(**self.get_scheduler_config(**config))
            sample, residual = self._sample_and_logits(scheduler, time_step)
            with tempfile.TemporaryDirectory() as tmpdirname:
                scheduler.save_config(tmpdirname)
                new_scheduler = scheduler_class.from_pretrained(tmpdirname)
            scheduler.set_timesteps(num_inference_steps)
            new_scheduler.set_timesteps(num_inference_steps)
            output = scheduler.step(residual, time_step, sample, **self._step_kwargs(scheduler, kwargs)).prev_sample
            new_output = new_scheduler.step(
                residual, time_step, sample, **self._step_kwargs(scheduler, kwargs)
            ).prev_sample
            assert torch.sum(torch.abs(output - new_output)) < 1e-5, "Scheduler outputs are not identical"

    def check_over_forward(self, time_step=0, **forward_kwargs):
        kwargs = dict(self.forward_default_kwargs)
        kwargs.update(forward_kwargs)
        num_inference_steps = kwargs.pop("num_inference_steps", None)
        for scheduler_class in self.scheduler_classes:
            scheduler = scheduler_class(**self.get_scheduler_config())
            sample, residual = self._sample_and_logits(scheduler, time_step)
            with tempfile.TemporaryDirectory() as tmpdirname:
                scheduler.save_config(tmpdirname)
                new_scheduler = scheduler_class.from_pretrained(tmpdirname)
            scheduler.set_timesteps(num_inference_steps)
            new_scheduler.set_timesteps(num_inference_steps)
            output = scheduler.step(residual, time_step, sample, **self._step_kwargs(scheduler, kwargs)).prev_sample
            new_output = new_scheduler.step(
                residual, time_step, sample, **self._step_kwargs(scheduler, kwargs)
            ).prev_sample
            assert torch.sum(torch.abs(output - new_output)) < 1e-5, "Scheduler outputs are not identical"

    def test_from_save_pretrained(self):
        self.check_over_forward(time_step=self.default_timestep)

    def test_step_shape(self):
        kwargs = dict(self.forward_default_kwargs)
        num_inference_steps = kwargs.pop("num_inference_steps", self.default_num_inference_steps)
        for scheduler_class in self.scheduler_classes:
            scheduler = scheduler_class(**self.get_scheduler_config())
            sample, residual = self._sample_and_logits(scheduler, self.default_timestep)
            scheduler.set_timesteps(num_inference_steps)
            output_0 = scheduler.step(residual, self.default_timestep, sample, **kwargs).prev_sample
            output_1 = scheduler.step(residual, self.default_timestep_2, sample, **kwargs).prev_sample
            self.assertEqual(output_0.shape, sample.shape)
            self.assertEqual(output_0.shape, output_1.shape)

    def test_scheduler_outputs_equivalence(self):
        kwargs = dict(self.forward_default_kwargs)
        num_inference_steps = kwargs.pop("num_inference_steps", self.default_num_inference_steps)
        for scheduler_class in self.scheduler_classes:
            scheduler = scheduler_class(**self.get_scheduler_config())
            sample, residual = self._sample_and_logits(scheduler, self.default_timestep)
            scheduler.set_timesteps(num_inference_steps)
            outputs_dict = scheduler.step(residual, self.default_timestep, sample, **self._step_kwargs(scheduler, kwargs))
            outputs_tuple = scheduler.step(
                residual, self.default_timestep, sample, return_dict=False, **self._step_kwargs(scheduler, kwargs)
            )
            for tuple_value, dict_value in zip(outputs_tuple, outputs_dict.values()):
                self.assertTrue(torch.equal(tuple_value, dict_value))

    def test_scheduler_public_api(self):
        # The common test exempts VQDiffusionScheduler (by class) from `init_noise_sigma` / `scale_model_input`:
        # a scheduler over discrete tokens has no noise scale. MageScheduler needs the same exemption.
        for scheduler_class in self.scheduler_classes:
            scheduler = scheduler_class(**self.get_scheduler_config())
            self.assertTrue(hasattr(scheduler, "step"))
            self.assertTrue(hasattr(scheduler, "set_timesteps"))

    @unittest.skip(reason="Test not supported: add_noise(sample, timestep) masks token ids, it adds no noise "
                   "tensor (as for VQDiffusionScheduler); see test_add_noise_masks_on_device")
    def test_add_noise_device(self):
        pass

    @unittest.skip(reason="MageScheduler has no beta schedule (the common test exempts VQDiffusionScheduler by class)")
    def test_trained_betas(self):
        pass

    # ---------------------------------------------------------------- MAGE-specific, modelled on the VQDiffusion ones

    def test_mask_schedules(self):
        for mask_schedule in ["cosine", "linear"]:
            self.check_over_configs(mask_schedule=mask_schedule)

    def test_temperatures(self):
        for choice_temperature in [0.0, 4.5]:
            self.check_over_configs(choice_temperature=choice_temperature)
        for sampling_temperature in [0.5, 1.0]:
            self.check_over_forward(sampling_temperature=sampling_temperature)

    def test_time_indices(self):
        for t in [0, 3, 7]:
            self.check_over_forward(time_step=t)

    def test_last_step_unmasks_everything(self):
        scheduler = MageScheduler(**self.get_scheduler_config())
        scheduler.set_timesteps(8)
        last = scheduler.timesteps[-1]  # timesteps descend: the last step is timestep 0
        sample, residual = self._sample_and_logits(scheduler, last)
        output = scheduler.step(residual, last, sample, generator=torch.manual_seed(0))
        self.assertFalse(bool((output.prev_sample == MASK_TOKEN_ID).any()))
        self.assertTrue(torch.equal(output.prev_sample, output.pred_original_sample))

    def test_add_noise_masks_on_device(self):
        """As aMUSEd's add_noise: the tokens still unknown when the step at `timestep` starts are masked."""
        scheduler = MageScheduler(**self.get_scheduler_config())
        scheduler.set_timesteps(4)
        sample = self.dummy_sample(mask_token_id=0).to(torch_device)
        masked = scheduler.add_noise(sample, scheduler.timesteps[2], generator=torch.manual_seed(0))  # step 2 of 4
        self.assertEqual(masked.shape, sample.shape)
        self.assertEqual(masked.device, sample.device)
        mask = masked == MASK_TOKEN_ID
        self.assertTrue(torch.equal(masked[~mask], sample[~mask]))
        self.assertEqual(int(mask.sum(dim=1)[0]), math.ceil(NUM_TOKENS * math.cos(math.pi / 4)))
        self.assertTrue(bool((scheduler.add_noise(sample, scheduler.timesteps[0]) == MASK_TOKEN_ID).all()))
