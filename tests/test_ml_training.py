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
    params = TrainParams(epochs=6, batch_size=16, lr=2e-3, patience=6, workers=2)
    run = run_training(params, tiny_project(), tmp_path, tmp_path / "model.pt", Recorder())
    p = run.placement
    assert p.is_cuda and p.channels_last and p.pin_memory
    assert p.amp_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert "no CUDA device" not in " ".join(run.findings)
    assert run.fit.test["auc"] > 0.8, rows(run.fit.history, "train_loss", "val_loss", "val_auc")
