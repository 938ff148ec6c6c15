"""The papers' training protocol in the engine: total-energy loss, mace's stage two, the best model kept."""

from __future__ import annotations

import csv

import pytest
import torch
from finetune_setup import finetune_config

from peft_equi_train import FinetuneConfig, Finetuner, evaluate
from peft_equi_train.checkpoint import load_checkpoint
from peft_equi_train.engine import load_splits
from peft_equi_train.metrics import weighted_loss


def test_total_energy_loss_is_n_squared_stronger_than_per_atom():
    energy, ref = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 2.5])
    forces, ref_forces = torch.zeros(7, 3), torch.ones(7, 3)
    n_atoms = torch.tensor([3.0, 4.0])
    args = (energy, forces, ref, ref_forces, n_atoms, 2.0, 10.0)
    total = weighted_loss(*args, energy_loss="total")
    per_atom = weighted_loss(*args, energy_loss="per_atom")
    assert total == pytest.approx(2.0 * (0.25 + 0.25) / 2 + 10.0)
    assert per_atom == pytest.approx(2.0 * (0.25 / 9 + 0.25 / 16) / 2 + 10.0)
    with pytest.raises(ValueError, match="energy_loss"):
        weighted_loss(*args, energy_loss="huber")


def test_total_energy_loss_is_the_default_and_validated(files, tmp_path):
    assert finetune_config(files, tmp_path).energy_loss == "total"
    with pytest.raises(ValueError, match="start_swa"):
        finetune_config(files, tmp_path, swa=True, start_swa=2, epochs=2)
    assert finetune_config(files, tmp_path, swa=True, epochs=8).stage_two_start() == 6  # mace: epochs // 4 * 3
    assert finetune_config(files, tmp_path, epochs=8).stage_two_start() is None


def _rows(run) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_stage_two_switches_lr_and_weights_and_restarts_the_best_model_search(files, tmp_path):
    config = finetune_config(
        files, tmp_path / "swa", epochs=4, swa=True, start_swa=2, swa_lr=1e-4, swa_energy_weight=7.0, lr=1e-3
    )
    finetuner = Finetuner(config)
    seen = []
    original = finetuner.loop.validate

    def spy(model, prepared):
        seen.append((finetuner.loop.energy_loss, *finetuner.loop.weights))
        return original(model, prepared)

    finetuner.loop.validate = spy
    result = finetuner.run()
    rows = _rows(tmp_path / "swa")
    assert [r["stage"] for r in rows] == ["1", "1", "2", "2"]
    assert [float(r["lr"]) for r in rows[2:]] == [1e-4, 1e-4]
    # stage two weighs the per-atom energy error, as mace's stage two does whatever --loss is
    assert seen == [("total", 1.0, 1000.0)] * 2 + [("per_atom", 7.0, 100.0)] * 2
    kept = result["kept"]
    assert kept["stage_two_from_epoch"] == 3 and kept["epoch"] in (3, 4)  # chosen among stage-two epochs only
    stage_two_losses = [float(r["valid_loss"]) for r in rows[2:]]
    assert kept["epoch"] == 3 + stage_two_losses.index(min(stage_two_losses))
    # stage one's best model is tested too (as mace's run_train tests both)
    stage_one_losses = [float(r["valid_loss"]) for r in rows[:2]]
    assert kept["stage_one_best_epoch"] == 1 + stage_one_losses.index(min(stage_one_losses))
    assert set(result["stage_one_best"]) == set(result["after"]) == {"valid", "test"}
    assert result["stage_one_best"]["test"].forces_mae != result["after"]["test"].forces_mae


def _scripted_validation(finetuner: Finetuner, losses: list[float]) -> None:
    """Make the validation loss follow ``losses``, so that the best epoch is known in advance."""
    remaining = iter(losses)
    original = finetuner.loop.validate
    finetuner.loop.validate = lambda model, prepared: (next(remaining), original(model, prepared)[1])


def test_best_model_is_kept_and_evaluated(files, tmp_path):
    runs = {}
    for keep in ("best", "last"):
        finetuner = Finetuner(finetune_config(files, tmp_path / keep, epochs=4, keep=keep))
        _scripted_validation(finetuner, [3.0, 1.0, 2.0, 4.0])
        runs[keep] = (finetuner, finetuner.run())
    (best_tuner, best), (last_tuner, last) = runs["best"], runs["last"]
    assert best["kept"]["epoch"] == 2 and last["kept"]["epoch"] == 4
    checkpoint = load_checkpoint(tmp_path / "best" / "checkpoint.pt")
    assert checkpoint["best"]["epoch"] == 2 and checkpoint["best"]["loss"] == 1.0
    kept = best_tuner.model.adapter_state_dict()
    assert all(torch.equal(kept[k], v) for k, v in checkpoint["best"]["state"].items())
    final = last_tuner.model.adapter_state_dict()
    assert any(not torch.equal(kept[k], final[k]) for k in kept)
    # the reported errors are those of the kept weights
    test = best_tuner.prepare(load_splits(best_tuner.config)[2])
    again = evaluate(best_tuner.potential, best_tuner.model, test, batch_size=best_tuner.config.eval_batch_size)
    assert best["after"]["test"].forces_mae == again.forces_mae
    assert best["after"]["test"].forces_mae != last["after"]["test"].forces_mae


class _Interrupted(Exception):
    pass


@pytest.mark.slow
def test_resume_across_the_stage_switch_equals_a_straight_run(files, tmp_path):
    options = dict(epochs=4, swa=True, start_swa=2, swa_lr=1e-4, lr=1e-3)
    straight = Finetuner(finetune_config(files, tmp_path / "a", **options)).run()
    interrupted = Finetuner(finetune_config(files, tmp_path / "b", **options))
    original = interrupted.loop.train_epoch

    def stop_at_stage_two(wrapped, state, loader, epoch, replays=None):
        if epoch == 2:
            raise _Interrupted
        return original(wrapped, state, loader, epoch, replays)

    interrupted.loop.train_epoch = stop_at_stage_two
    with pytest.raises(_Interrupted):
        interrupted.run()
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 2
    resumed = Finetuner(finetune_config(files, tmp_path / "b", resume=True, **options)).run()
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(a["adapter"][k], b["adapter"][k]) for k in a["adapter"])
    assert all(torch.equal(a["best"]["state"][k], b["best"]["state"][k]) for k in a["best"]["state"])
    assert resumed["kept"] == straight["kept"]
    assert resumed["after"]["test"].forces_mae == straight["after"]["test"].forces_mae


def test_config_round_trips_the_new_options(tmp_path):
    config = FinetuneConfig(model="m", train=tmp_path, swa=True, epochs=10, keep="last", energy_loss="per_atom")
    again = FinetuneConfig.model_validate_json(config.model_dump_json())
    assert again == config


def test_process_shares_make_up_the_single_process_batches():
    """The training sampler: w processes' shares of batch b are one process's batch b, in numpy's per-epoch order."""
    import numpy as np
    from torch.utils.data import DataLoader

    from peft_equi.errors import PeftEquiError
    from peft_equi_train.loader import ShuffledShares

    n, batch, seed = 23, 4, 5
    one = [b.tolist() for b in DataLoader(range(n), batch_size=batch, sampler=ShuffledShares(n, batch, seed))]
    shares = [
        [b.tolist() for b in DataLoader(range(n), batch_size=batch // 2, sampler=ShuffledShares(n, batch, seed, r, 2))]
        for r in (0, 1)
    ]
    assert len(one) == len(shares[0]) == len(shares[1]) == n // batch  # the incomplete last batch is dropped
    for whole, first, second in zip(one, *shares):
        assert sorted(whole) == sorted(first + second) and not set(first) & set(second)
    first_epoch = [i for b in one for i in b]
    assert first_epoch == np.random.default_rng(seed + 1000).permutation(n)[:20].tolist()
    sampler = ShuffledShares(n, batch, seed)
    sampler.use_epoch(3)  # epochs draw new orders; a resumed run draws the same one
    assert list(sampler) == np.random.default_rng(seed + 4000).permutation(n)[:20].tolist() != first_epoch
    with pytest.raises(PeftEquiError, match="batch_size 5 is not divisible by 2 processes"):
        ShuffledShares(n, 5, seed, 0, 2)
