"""The shared training loop: loss goes down, only the right tensors move, resume is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from likeness.methods import get_method
from likeness.methods.preparation import Augmentation, photo_batches, prepare_identities
from likeness.methods.training import ResumeMismatchError, TrainingConfig, diffusion_loss, step_generator, train
from likeness.models import load_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(method_name, astronaut_path, out_dir):
    method = get_method(method_name)
    pipe = load_pipeline("likeness/tiny-sd")
    prepared, _ = prepare_identities([("astro", [astronaut_path])], size=64, framing="face")
    setup = method.setup(pipe, ["astro"], {**method.defaults, "out_dir": out_dir})
    make_batch = photo_batches(prepared, {"astro": setup.identities["astro"].subject}, batch_size=1, aug=Augmentation())
    return pipe, setup, make_batch


def _fixed_loss(pipe, make_batch, n=6):
    """Loss on a fixed set of (view, noise, timestep): comparable before and after training."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        return float(np.mean([diffusion_loss(pipe, scheduler, make_batch(0, 0, np.random.default_rng(i)),
                                             step_generator(123, i, 0, 0)).item() for i in range(n)]))


def test_lora_training_reduces_loss_and_touches_only_lora_weights(tiny_models, astronaut_path, tmp_path):
    pipe, setup, make_batch = _setup("dreambooth-lora", astronaut_path, tmp_path)
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items() if "lora" not in k}
    before = _fixed_loss(pipe, make_batch)
    result = train(pipe, setup.trainable, make_batch, TrainingConfig(max_steps=15, learning_rate=1e-2, progress=False),
                   tmp_path, modules=setup.modules)
    assert _fixed_loss(pipe, make_batch) < before - 0.005
    assert setup.trainable and all("lora" in name for name in setup.trainable)
    after = pipe.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())
    assert (tmp_path / "loss.png").stat().st_size > 0
    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr" and len(rows) == 16 and len(result.losses) == 15


def test_textual_inversion_changes_only_the_new_token_rows(tiny_models, astronaut_path, tmp_path):
    pipe, setup, make_batch = _setup("textual-inversion", astronaut_path, tmp_path)
    weight = pipe.text_encoder.get_input_embeddings().weight
    new_id = pipe.tokenizer.convert_tokens_to_ids("<astro>")
    original = weight.detach().clone()
    before = _fixed_loss(pipe, make_batch)
    train(pipe, setup.trainable, make_batch, TrainingConfig(max_steps=8, learning_rate=5e-2, progress=False),
          tmp_path, modules=setup.modules, after_step=setup.after_step)
    changed = (weight.detach() != original).any(dim=1).nonzero().flatten().tolist()
    assert changed == [new_id]
    assert _fixed_loss(pipe, make_batch) < before
    assert all(not p.requires_grad for p in pipe.unet.parameters())


def test_resume_from_checkpoint_equals_uninterrupted_run(tiny_models, astronaut_path, tmp_path):
    config = TrainingConfig(max_steps=6, learning_rate=1e-2, checkpoint_every=3, gradient_accumulation_steps=2, progress=False)

    pipe, setup, make_batch = _setup("dreambooth-lora", astronaut_path, tmp_path)
    straight = train(pipe, setup.trainable, make_batch, config, tmp_path / "straight", modules=setup.modules)
    expected = {k: v.detach().clone() for k, v in setup.trainable.items()}

    pipe, setup, make_batch = _setup("dreambooth-lora", astronaut_path, tmp_path)

    def crashing(step, micro, rng):
        if step == 4:
            raise KeyboardInterrupt("simulated crash")
        return make_batch(step, micro, rng)

    with pytest.raises(KeyboardInterrupt):
        train(pipe, setup.trainable, crashing, config, tmp_path / "resumed", modules=setup.modules)
    assert (tmp_path / "resumed" / "checkpoints" / "step-000003").is_dir()

    pipe, setup, make_batch = _setup("dreambooth-lora", astronaut_path, tmp_path)  # a fresh process would do this
    resumed = train(pipe, setup.trainable, make_batch, config, tmp_path / "resumed", modules=setup.modules)
    assert resumed.resumed_from == 3
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-6)
    for name, value in expected.items():
        torch.testing.assert_close(setup.trainable[name].detach(), value, rtol=0, atol=1e-6)

    pipe, setup, make_batch = _setup("dreambooth-lora", astronaut_path, tmp_path)
    other = TrainingConfig(max_steps=6, learning_rate=5e-3, checkpoint_every=3, progress=False)
    with pytest.raises(ResumeMismatchError, match="different configuration"):
        train(pipe, setup.trainable, make_batch, other, tmp_path / "resumed", modules=setup.modules)
