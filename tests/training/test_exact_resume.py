"""The parts of an exact resume (training/exact_resume.py): random states that survive a checkpoint
file, a data order that is the seed's and the epoch's alone and restarts mid-epoch, and observers
that leave the training's random streams alone. The end-to-end proofs (kill -9 and SIGTERM resumes
equal to an uninterrupted run, bit for bit) are in test_reliability.py."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch

from diffprobe.io.loading import safe_load
from diffprobe.training.callbacks.periodic import PeriodicObserver
from diffprobe.training.datamodules import ConceptShapesDataModule
from diffprobe.training.exact_resume import (
    ExactResume,
    ResumableSampler,
    data_position,
    random_states,
    resume_position,
    run_seed,
    set_random_states,
)


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_random_states_survive_a_checkpoint_file_and_replay_the_same_draws(tmp_path):
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    _draws()
    torch.save({"callbacks": {"ExactResume": ExactResume().state_dict()}}, tmp_path / "c.ckpt")
    expected = _draws()
    _draws()  # move every stream on
    state = safe_load(tmp_path / "c.ckpt")["callbacks"]["ExactResume"]  # the weights-only loader train.py uses
    set_random_states(state["random_states"][0])
    assert _draws() == expected


def test_exact_resume_restores_right_before_the_first_step_and_only_once():
    callback = ExactResume()
    torch.manual_seed(1)
    callback.load_state_dict({"random_states": [random_states()]})
    expected = torch.rand(4)
    torch.rand(100)  # what happens between loading and the first step (observers catching up...)
    trainer = SimpleNamespace(world_size=1, global_rank=0)
    callback.on_train_batch_start(trainer, None, None, 0)
    assert torch.equal(torch.rand(4), expected)
    after = torch.get_rng_state()
    callback.on_train_batch_start(trainer, None, None, 1)
    assert torch.equal(torch.get_rng_state(), after), "a later step must not be sent back"


def test_random_states_of_another_world_size_are_not_applied():
    callback = ExactResume()
    callback.load_state_dict({"random_states": [random_states(), random_states()]})
    before = torch.get_rng_state()
    callback.on_train_batch_start(SimpleNamespace(world_size=1, global_rank=0), None, None, 0)
    assert torch.equal(torch.get_rng_state(), before)


def test_the_data_order_is_the_seed_and_epoch_and_restarts_mid_epoch():
    data = list(range(40))
    sampler = ResumableSampler(data, batch_size=8, seed=3)
    sampler.set_epoch(1)
    epoch_1 = list(sampler)
    assert sorted(epoch_1) == data and epoch_1 != data
    torch.rand(10)  # the global stream plays no part
    assert list(sampler) == epoch_1
    sampler.set_epoch(2)
    assert list(sampler) != epoch_1

    resumed = ResumableSampler(data, batch_size=8, seed=3)
    resumed.resume_at(epoch=1, batches=2)
    # No set_epoch: Lightning makes a resumed fit's first iterator (and workers draw from it) first.
    assert list(resumed) == epoch_1[16:], "the epoch continues after the 2 batches already trained"
    assert list(resumed) == epoch_1, "only once: the next pass starts at the beginning"
    other_epoch = ResumableSampler(data, batch_size=8, seed=3)
    other_epoch.resume_at(epoch=0, batches=2)
    other_epoch.set_epoch(1)
    assert list(other_epoch) == epoch_1, "a position in another epoch does not apply"


def test_two_ranks_share_one_order_and_split_it():
    data = list(range(40))
    ranks = [ResumableSampler(data, batch_size=4, num_replicas=2, rank=r, seed=0) for r in (0, 1)]
    whole = ResumableSampler(data, batch_size=4, seed=0)
    for sampler in [*ranks, whole]:
        sampler.set_epoch(4)
    first, second = list(ranks[0]), list(ranks[1])
    assert sorted(first + second) == data
    assert first == list(whole)[0::2] and second == list(whole)[1::2]


def test_data_position_counts_trained_batches_and_a_finished_epoch_as_the_next_one(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")

    def trainer(epoch, batches):
        loop = SimpleNamespace(
            # During epoch e Lightning has started e + 1 epochs and processed e.
            epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=epoch, started=epoch + 1)),
            epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=SimpleNamespace(processed=batches))),
        )
        return SimpleNamespace(fit_loop=loop, num_training_batches=5, world_size=1)

    assert data_position(trainer(1, 2), 8) == {"epoch": 1, "batches": 2, "seed": 7, "world_size": 1, "batch_size": 8}
    # Saved on an epoch's last batch: the resume starts the next epoch at its beginning (its order, not
    # the finished epoch's: DataLoader workers draw indices before Lightning sets the epoch).
    assert data_position(trainer(1, 5), 8)["epoch"] == 2 and data_position(trainer(1, 5), 8)["batches"] == 0
    assert data_position(None, 8) == {}

    position = data_position(trainer(1, 2), 8)
    assert resume_position(position, trainer(1, 2), 8) == (1, 2)
    assert resume_position(position, trainer(1, 2), 16) is None, "another batch size: other batches"
    monkeypatch.setenv("PL_GLOBAL_SEED", "8")
    assert resume_position(position, trainer(1, 2), 8) is None, "another seed: another order"
    assert resume_position({}, trainer(1, 2), 8) is None


def test_a_datamodule_resumes_its_position_once():
    data = ConceptShapesDataModule(image_size=16, train_size=40, heldout_size=8, batch_size=8)
    data.load_state_dict({"data_position": {"epoch": 0, "batches": 2, "seed": run_seed(), "world_size": 1, "batch_size": 8}})
    assert len(list(data.train_dataloader())) == 3, "the resumed epoch: 5 batches, 2 already trained"
    assert len(list(data.train_dataloader())) == 5, "a later fit of the same DataModule starts at the beginning"


class DrawingObserver(PeriodicObserver):
    needs_tensorboard = False

    def observe(self, trainer, pl_module, step):
        self.drawn = torch.rand(5)  # a reader seeding torch, a probe's random start...
        torch.manual_seed(123)


def test_an_observer_that_draws_random_numbers_leaves_the_training_stream_alone():
    observer = DrawingObserver(every_n_steps=1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    observer._observe(SimpleNamespace(global_step=1, is_global_zero=True), None)
    assert observer.last_step == 1 and observer.drawn.shape == (5,)
    assert torch.equal(torch.rand(3), expected)
