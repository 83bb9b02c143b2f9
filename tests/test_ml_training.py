"""The shared training loop on tiny synthetic images: it learns, it stops early, it names
overfitting and keeps the best epoch."""
import logging

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from handlers.training.session import run_training  # noqa: E402
from handlers.ml.training import Reporter, detect_overfitting  # noqa: E402
from handlers.training.params import TrainParams  # noqa: E402


def tiny_project(train=48, val=16, test=24, size=32):
    return {"data": {"root": None, "classes": ["NORMAL", "PNEUMONIA"], "positive_class": "PNEUMONIA",
                     "image_size": size, "val_fraction": 0.1, "max_bad_fraction": 0.01,
                     "synthetic": {"train": train, "val": val, "test": test, "seed": 0}},
            "model": {"arch": "resnet18", "weights": "none", "freeze_until": None}}


class Recorder(Reporter):
    def __init__(self):
        super().__init__(logging.getLogger("test"))
        self.metrics = []

    def metric(self, name, value, unit="", step=None):
        self.metrics.append((name, value, step))


def rows(history, *keys):
    return [tuple(round(h[k], 4) for k in keys) for h in history]


def test_detect_overfitting_names_the_epochs():
    history = [{"epoch": 1, "train_loss": 0.9, "val_loss": 0.7}, {"epoch": 2, "train_loss": 0.6, "val_loss": 0.5},
               {"epoch": 3, "train_loss": 0.4, "val_loss": 0.6}, {"epoch": 4, "train_loss": 0.2, "val_loss": 0.9}]
    finding = detect_overfitting(history)
    assert "from 0.5000 (epoch 2) to 0.9000 (epoch 4)" in finding
    assert "kept epoch 2's weights" in finding
    assert detect_overfitting(history[:2]) is None
    # validation loss rising while training loss rises too is not overfitting
    assert detect_overfitting([{"epoch": 1, "train_loss": 0.5, "val_loss": 0.5},
                               {"epoch": 2, "train_loss": 0.6, "val_loss": 0.7}]) is None


@pytest.mark.slow
def test_training_beats_chance_on_the_synthetic_set(tmp_path):
    reporter = Recorder()
    params = TrainParams(epochs=6, batch_size=16, lr=2e-3, patience=6, workers=0)
    run = run_training(params, tiny_project(), tmp_path, tmp_path / "model.pt", reporter)
    assert run.data.synthetic and "SYNTHETIC DATA" in run.findings[0]
    assert run.fit.test["auc"] > 0.8, rows(run.fit.history, "train_loss", "val_loss", "val_auc")
    assert run.fit.test["accuracy"] > 0.65
    assert sum(map(sum, run.fit.test["confusion_matrix"])) == 48
    names = {name for name, _, step in reporter.metrics if step == 1}
    assert {"train_loss", "val_loss", "val_accuracy", "val_auc", "val_f1", "val_sensitivity",
            "val_specificity"} <= names
    assert {"test_auc", "test_accuracy"} <= {name for name, _, _ in reporter.metrics}


@pytest.mark.slow
def test_a_set_it_can_only_memorise_stops_early_and_keeps_the_best_epoch(tmp_path):
    params = TrainParams(epochs=12, batch_size=8, lr=3e-3, patience=2, workers=0, schedule="constant")
    run = run_training(params, tiny_project(train=16, val=24, test=8), tmp_path, tmp_path / "model.pt",
                       Recorder(), synthetic_signal=False)
    fit = run.fit
    assert fit.stopped_early, rows(fit.history, "train_loss", "val_loss")
    assert len(fit.history) < 12
    assert fit.overfitting and "overfitting: validation loss rose" in fit.overfitting
    assert any(f.startswith("overfitting") for f in run.findings)
    assert any(f.startswith("early stopping after epoch") for f in run.findings)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["meta"]["epoch"] == fit.best_epoch < len(fit.history)


@pytest.mark.gpu
def test_on_a_gpu_training_uses_amp_channels_last_and_pinned_memory(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    params = TrainParams(epochs=6, batch_size=16, lr=2e-3, patience=6, workers=2, min_steps=30)
    run = run_training(params, tiny_project(), tmp_path, tmp_path / "model.pt", Recorder())
    assert run.fit.optimizer_steps >= 30                      # the step budget raised the epochs
    p = run.placement
    assert p.is_cuda and p.channels_last and p.pin_memory
    assert p.amp_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert "no CUDA device" not in " ".join(run.findings)
    assert run.fit.test["auc"] > 0.8, rows(run.fit.history, "train_loss", "val_loss", "val_auc")


# ------------------------------------------------------------------ the guards against a constant classifier

def test_a_step_budget_raises_the_epochs_and_holds_off_early_stopping():
    from handlers.ml.training import TrainConfig, may_stop, planned_epochs
    cfg = TrainConfig(epochs=3, min_steps=300, min_epochs=3)
    assert planned_epochs(cfg, steps_per_epoch=8) == 38            # 3 x 8 = 24 steps would be too few
    assert planned_epochs(cfg, steps_per_epoch=200) == 3           # a real dataset already has them
    assert planned_epochs(TrainConfig(epochs=2, min_epochs=3), 8) == 2   # min_epochs never adds epochs
    assert not may_stop(cfg, epoch=10, steps_done=80)
    assert not may_stop(cfg, epoch=2, steps_done=400)
    assert may_stop(cfg, epoch=3, steps_done=300)


def test_min_steps_auto_is_a_gpu_budget():
    from handlers.training.params import GPU_MIN_STEPS
    assert TrainParams().resolved_min_steps(on_gpu=True) == GPU_MIN_STEPS == 300
    assert TrainParams().resolved_min_steps(on_gpu=False) == 0
    assert TrainParams(min_steps=50).resolved_min_steps(on_gpu=True) == 50


def test_batchnorm_recalibration_takes_the_plain_average_and_leaves_the_weights():
    from handlers.ml.device import place
    from handlers.ml.training import recalibrate_batchnorm
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    bn = model[1]
    bn.running_mean.fill_(100.0)
    bn.running_var.fill_(1e-3)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [(torch.randn(8, 3, 5, 5) * 2 + 1, torch.zeros(8, dtype=torch.long)) for _ in range(4)]
    model.eval()
    used = recalibrate_batchnorm(model, batches, place("cpu"), max_images=32)
    assert used == 32 and not model.training and bn.momentum == 0.1
    with torch.no_grad():
        acts = [model[0](x) for x, _ in batches]
    expected_mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in acts]).mean(0)
    expected_var = torch.stack([a.var(dim=(0, 2, 3), unbiased=True) for a in acts]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, expected_var, atol=1e-4)
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k
    assert recalibrate_batchnorm(model, batches, place("cpu"), max_images=8) == 8    # stops at the budget


def test_the_decision_rule_and_any_warning_travel_with_the_checkpoint(tmp_path):
    params = TrainParams(epochs=2, batch_size=16, workers=0, bn_recalibration_images=32)
    run = run_training(params, tiny_project(train=24, val=12, test=12), tmp_path, tmp_path / "model.pt", Recorder())
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["meta"]
    assert saved["threshold"] == run.fit.threshold is not None
    assert 0 < saved["threshold"] < 1 and run.fit.test["threshold"] == saved["threshold"]
    assert "quality_warning" in saved and saved["test"]["auc"] == run.fit.test["auc"]
    assert any(f.startswith("operating threshold ") for f in run.findings)
    assert run.summary()["threshold_validation"]["images"] == 24
    from handlers.ml.onnx_export import METADATA_PREFIX, model_metadata
    props = model_metadata(saved, "sha")
    assert props[f"{METADATA_PREFIX}threshold"] == str(saved["threshold"])
    assert props[f"{METADATA_PREFIX}quality_warning"] == (saved["quality_warning"] or "")


def test_early_stopping_waits_for_the_step_budget(tmp_path):
    params = TrainParams(epochs=2, batch_size=8, lr=3e-3, patience=1, workers=0, schedule="constant",
                         min_steps=12, min_epochs=1, bn_recalibration_images=0)
    run = run_training(params, tiny_project(train=8, val=8, test=8), tmp_path, tmp_path / "model.pt",
                       Recorder(), synthetic_signal=False)
    # 12 steps at 2 per epoch: the run is 6 epochs, and patience 1 on labels it can only
    # memorise would have stopped it after 2 or 3 without the budget
    assert run.fit.epochs_planned == 6
    assert not run.fit.stopped_early and len(run.fit.history) == 6 and run.fit.optimizer_steps == 12
