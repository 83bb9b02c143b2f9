"""handlers.training.audit.folder: each GPU-readiness rule, the formatting-preserving patch, the report."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("libcst")

from handlers.training.audit.folder import RULES, audit_folder, audit_source, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEVICE_LINE = 'device = torch.device("cuda" if torch.cuda.is_available() else "cpu")'


def audit(src: str):
    return audit_source(textwrap.dedent(src).lstrip("\n"), "s.py")


def hits(findings, rule):
    return [(f.line, f.column) for f in findings if f.rule == rule]


def assert_idempotent(patched: str) -> None:
    again, twice = audit_source(patched, "s.py")
    assert twice == patched
    assert [f for f in again if f.fixed] == []


# -- each rule, with its position ----------------------------------------------------------

RULE_CASES = [
    ("hardcoded-cuda", """
        import torch
        x = torch.ones(2)
        y = x.cuda()
        z = x.cuda(0)
        w = x.to("cuda:0")
        v = x.to(torch.device("cuda"))
        dev = torch.device("cuda")
        t = torch.zeros(2, device="cuda")
        backend = "cuda"
        """, [(3, 5), (4, 5), (5, 10), (6, 10), (7, 7), (8, 27)]),
    ("model-not-moved", """
        import torch.nn as nn
        from torchvision import models

        class Net(nn.Module):
            pass

        a = models.resnet18()
        b = nn.Sequential(nn.Linear(2, 2))
        c = Net()
        d = Net()
        d.to("cpu")
        loss_fn = nn.CrossEntropyLoss()
        """, [(7, 1), (8, 1), (9, 1)]),
    ("tensor-not-moved", """
        def run(model, train_loader):
            for x, y in train_loader:
                model(x, y)
            for i, (a, b) in enumerate(train_loader):
                a = a.to("cpu")
                model(a, b, i)
        """, [(2, 9), (4, 9)]),
    ("dataloader-no-pin-memory", """
        from torch.utils.data import DataLoader
        a = DataLoader(ds)
        b = DataLoader(ds, pin_memory=False)
        c = DataLoader(ds, pin_memory=True)
        d = DataLoader(ds, **options)
        """, [(2, 5), (3, 5)]),
    ("dataloader-no-workers", """
        import torch
        a = torch.utils.data.DataLoader(ds)
        b = torch.utils.data.DataLoader(ds, num_workers=0)
        c = torch.utils.data.DataLoader(ds, num_workers=2)
        """, [(2, 5), (3, 5)]),
    ("torch-load-no-map-location", """
        import torch
        a = torch.load("a.pt")
        b = torch.load("b.pt", map_location="cpu")
        c = torch.load("c.pt", "cpu")
        """, [(2, 5)]),
    ("eval-without-no-grad", """
        import torch

        def evaluate(model, data):
            return model(data)

        @torch.no_grad()
        def validate(model, data):
            return model(data)

        def test_step(model, data):
            with torch.inference_mode():
                return model(data)

        def predict(x):
            return x + 1
        """, [(3, 5)]),
    ("eval-without-model-eval", """
        import torch

        def fit(model):
            model.train()

        @torch.no_grad()
        def evaluate(model, data):
            return model(data)

        @torch.no_grad()
        def validate(model, data):
            model.eval()
            return model(data)
        """, [(7, 5)]),
]


@pytest.mark.parametrize("rule, src, expected", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_rule_fires_at_its_position(rule, src, expected):
    findings, patched = audit(src)
    assert hits(findings, rule) == expected
    assert all(f.fixed and f.fix for f in findings if f.rule == rule)
    assert_idempotent(patched)


def test_loop_patch_moves_only_unmoved_tensors_not_the_enumerate_index_or_paths():
    _, patched = audit(RULE_CASES[2][1] + """
            for step, (images, paths) in tqdm(enumerate(loader)):
                model(images, paths, step)
        """)
    assert "        b = b.to(device, non_blocking=True)\n        a = a.to(\"cpu\")\n" in patched
    assert "        images = images.to(device, non_blocking=True)\n        model(images" in patched
    assert "i.to(" not in patched and "paths.to(" not in patched and "step.to(" not in patched


def test_rules_are_the_documented_set():
    assert {c[0] for c in RULE_CASES} == set(RULES)


# -- the patch keeps the user's formatting ---------------------------------------------

SMALL = '''\
# train a tiny model
import torch  # the framework
from torch.utils.data import DataLoader


def run(ds):
    loader = DataLoader(ds,  batch_size=2)   # two per batch
    net = torch.nn.Linear(4,2)
    for x, y in loader:
        out = net(x) + y  # forward
    return out
'''

SMALL_PATCHED = '''\
# train a tiny model
import os
import torch  # the framework
from torch.utils.data import DataLoader

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run(ds):
    loader = DataLoader(ds,  batch_size=2, pin_memory=torch.cuda.is_available(), num_workers=min(4, os.cpu_count() or 1))   # two per batch
    net = torch.nn.Linear(4,2).to(device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = net(x) + y  # forward
    return out
'''


def test_patch_changes_only_what_it_fixes():
    findings, patched = audit_source(SMALL, "small.py")
    assert patched == SMALL_PATCHED
    assert [(f.line, f.rule) for f in findings] == [
        (7, "dataloader-no-pin-memory"), (7, "dataloader-no-workers"), (8, "model-not-moved"),
        (9, "tensor-not-moved")]
    assert_idempotent(patched)


def test_multiline_calls_keep_one_argument_a_line_and_their_comments():
    _, patched = audit('''
        import os
        import torch
        from torch.utils.data import DataLoader
        loader = DataLoader(
            ds,  # the data
            batch_size=2,  # two
        )
        ''')
    assert patched.endswith(
        "loader = DataLoader(\n"
        "    ds,  # the data\n"
        "    batch_size=2,  # two\n"
        "    pin_memory=torch.cuda.is_available(),\n"
        "    num_workers=min(4, os.cpu_count() or 1),\n"
        ")\n")
    assert patched.count("import os") == 1


def test_eval_function_patch_goes_after_the_docstring_and_under_other_decorators():
    findings, patched = audit('''
        import torch

        class Trainer:
            def fit(self):
                self.model.train()

            @staticmethod
            def evaluate(model, loader):
                """Accuracy on `loader`."""
                return sum(model(x).sum() for x, _ in loader)
        ''')
    assert ('''
    @staticmethod
    @torch.no_grad()
    def evaluate(model, loader):
        """Accuracy on `loader`."""
        model.eval()
''') in patched
    assert {f.rule for f in findings} == {"eval-without-no-grad", "eval-without-model-eval"}
    assert_idempotent(patched)


def test_existing_device_names_are_reused_and_cuda_only_assignment_falls_back():
    _, patched = audit('''
        import torch
        DEVICE = torch.device("cuda:0")
        x = torch.ones(1).cuda()
        ''')
    assert patched == ('import torch\nDEVICE = ' + DEVICE_LINE.split(" = ", 1)[1]
                       + "\nx = torch.ones(1).to(DEVICE)\n")


def test_module_without_imports_gets_torch_and_device_after_its_docstring():
    _, patched = audit('''
        """Doc."""
        y = x.cuda()
        ''')
    assert patched == f'"""Doc."""\nimport torch\n{DEVICE_LINE}\ny = x.to(device)\n'


# -- what is left alone or left to the user --------------------------------------------

def test_gpu_ready_script_has_no_findings():
    src = textwrap.dedent(f'''
        import os
        import torch
        from torch.utils.data import DataLoader

        {DEVICE_LINE}

        def main(ds, model):
            loader = DataLoader(ds, num_workers=os.cpu_count(), pin_memory=True)
            model = model.to(device)
            state = torch.load("m.pt", map_location=device)
            model.train()
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                model(x).sum().backward()

        @torch.no_grad()
        def evaluate(model, loader):
            model.eval()
            for batch, paths in loader:
                model(batch.to(device))
        ''')
    assert audit_source(src, "ok.py") == ([], src)


def test_heuristics_that_avoid_breaking_the_script():
    findings, patched = audit('''
        import torch
        from torchvision import models

        def build_model():
            model = models.resnet50()
            return model

        def train_and_evaluate(model, loader):
            for x, y in loader:
                model(x).sum().backward()

        def evaluate(model, val_loader):
            for batch in val_loader:
                model(batch["image"])
        ''')
    by_rule = {f.rule: f for f in findings}
    # the builder's caller places the model; the training loop is not an eval function
    assert "model-not-moved" not in by_rule
    assert [f.line for f in findings if f.rule.startswith("eval")] == [12, 12]
    # a dict batch and an eval() with no train() anywhere are reported, not patched
    assert not by_rule["tensor-not-moved"].fixed and by_rule["tensor-not-moved"].line == 13
    assert not by_rule["eval-without-model-eval"].fixed
    assert by_rule["eval-without-model-eval"].fix == ""
    assert "model.eval()" not in patched and "@torch.no_grad()" in patched


def test_a_model_built_inside_the_eval_function_is_left_to_the_user():
    findings, patched = audit('''
        import torch

        def fit(model):
            model.train()

        @torch.no_grad()
        def predict(x):
            model = build_model().to("cpu")
            return model(x)
        ''')
    assert [(f.line, f.rule, f.fixed) for f in findings] == [(7, "eval-without-model-eval", False)]
    assert ".eval()" not in patched


def test_device_patches_respect_a_function_s_own_device():
    findings, patched = audit('''
        import torch
        from pytorch_lightning import LightningModule

        def main():
            state = torch.load("a.pt")
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            x = torch.zeros(1).cuda()

        def step(batch, device):
            return batch.cuda()

        class Lit(LightningModule):
            def validation_step(self, batch, i):
                return self.model(batch)
        ''')
    assert [(f.line, f.rule, f.fixed) for f in findings] == [
        (5, "torch-load-no-map-location", False), (7, "hardcoded-cuda", True),
        (10, "hardcoded-cuda", True)]
    assert "assigned further down this function" in findings[0].message
    # both patches use the function's own `device`: no module-level line, no UnboundLocalError
    assert "torch.load(\"a.pt\")\n" in patched and "\ndevice = " not in patched
    assert "x = torch.zeros(1).to(device)" in patched and "return batch.to(device)" in patched


# -- running the patched script --------------------------------------------------------

CUDA_SCRIPT = '''\
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


def main():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
    loader = DataLoader(data, batch_size=16, shuffle=True)
    model = nn.Linear(8, 2).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in loader:
        x, y = x.cuda(), y.cuda()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print("trained on", next(model.parameters()).device.type)


if __name__ == "__main__":
    main()
'''


@pytest.mark.slow
def test_patched_cuda_script_trains_on_cpu_where_the_original_fails(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("the original script only fails where there is no CUDA device")
    findings, patched = audit_source(CUDA_SCRIPT, "train.py")
    assert [f.line for f in findings if f.rule == "hardcoded-cuda"] == [10, 13, 13]
    (tmp_path / "orig.py").write_text(CUDA_SCRIPT)
    (tmp_path / "patched.py").write_text(patched)
    # Both at once: each spends seconds importing torch.
    procs = [subprocess.Popen([sys.executable, name], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("orig.py", "patched.py")]
    (_, orig_err), (out, err) = (p.communicate(timeout=120) for p in procs)
    assert procs[0].returncode != 0
    assert "cuda" in orig_err.lower() or "nvidia" in orig_err.lower()
    assert procs[1].returncode == 0, err
    assert out.strip() == "trained on cpu"


# -- the folder and the report ---------------------------------------------------------

def make_folder(root: Path) -> Path:
    folder = root / "scripts"
    files = {
        "train.py": CUDA_SCRIPT,
        "clean.py": "print('no torch here')\n",
        "bad.py": "x = 1\ndef f(:\n    pass\n",
        "sub/load.py": "import torch\nstate = torch.load('m.pt')",   # no final newline
        "config.yaml": "epochs: 3\n",
        ".hidden/skip.py": "x.cuda()\n",
        "__pycache__/skip.py": "x.cuda()\n",
        "myenv/pyvenv.cfg": "home = /usr/bin\n",
        "myenv/lib/skip.py": "x.cuda()\n",
    }
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def test_folder_audit_skips_environments_and_reports_syntax_errors(tmp_path):
    result = audit_folder(make_folder(tmp_path))
    assert result.files == ["bad.py", "clean.py", "sub/load.py", "train.py"]
    assert result.errors == ["bad.py:2:7: syntax error: invalid syntax"]
    assert sorted(result.patched) == ["sub/load.py", "train.py"]
    assert result.counts()["torch-load-no-map-location"] == 1
    assert {f.file for f in result.findings} == {"sub/load.py", "train.py"}


def test_write_report_writes_a_complete_patched_copy_and_an_applicable_diff(tmp_path):
    folder = make_folder(tmp_path)
    result = audit_folder(folder)
    out = tmp_path / "out"
    write_report(result, out, "scripts/")
    report = (out / "report.md").read_text()
    assert "| `hardcoded-cuda` | 3 | 3 | 0 |" in report
    assert "- `train.py:10:13` hardcoded-cuda — " in report
    assert "bad.py:2:7: syntax error" in report
    data = json.loads((out / "report.json").read_text())
    assert data["counts"] == result.counts() and data["patched"] == ["sub/load.py", "train.py"]
    assert len(data["findings"]) == len(result.findings)
    patched = out / "patched"
    for rel in result.files:
        expected = result.patched.get(rel) or (folder / rel).read_text()
        assert (patched / rel).read_text() == expected
    assert (patched / "config.yaml").read_text() == "epochs: 3\n"
    assert not (patched / ".hidden").exists() and not (patched / "myenv").exists()
    assert not list(out.rglob(".*.*"))   # no temporary files left behind

    if shutil.which("patch") is None:
        pytest.skip("no `patch` program")
    copy = tmp_path / "applied"
    shutil.copytree(folder, copy)
    subprocess.run(["patch", "-p1", "-s", "-i", str(out / "changes.diff")], cwd=copy, check=True)
    for rel, text in result.patched.items():
        assert (copy / rel).read_text() == text


def test_missing_libcst_is_an_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "libcst", None)
    with pytest.raises(ImportError):
        audit_folder(tmp_path)


# -- the example scripts shipped in the repository --------------------------------------

def test_example_scripts_show_every_rule_and_patch_cleanly():
    result = audit_folder(REPO / "model_training_scripts")
    assert result.errors == []
    assert {"model.py", "train.py"} <= set(result.files)
    assert set(result.counts()) == set(RULES)
    assert "model.py" not in result.patched   # the builder leaves placement to its caller
    train = result.patched["train.py"]
    compile(train, "train.py", "exec")
    assert DEVICE_LINE in train and ".cuda()" not in train
    assert_idempotent(train)


@pytest.mark.slow
def test_patched_example_trains_one_epoch_on_cpu(tmp_path):
    """The shipped train.py, patched, runs end to end here: fake X-rays, no ImageNet download."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    image = pytest.importorskip("PIL.Image")
    write_report(audit_folder(REPO / "model_training_scripts"), tmp_path / "out", "scripts")
    work = tmp_path / "out" / "patched"
    for split in ("train", "val"):
        for i, cls in enumerate(("NORMAL", "PNEUMONIA")):
            (work / "data/chest_xray" / split / cls).mkdir(parents=True)
            for k in range(2):
                image.new("RGB", (64, 64), (40 * i + k, 0, 0)).save(
                    work / "data/chest_xray" / split / cls / f"{k}.png")
    sys.path.insert(0, str(work))
    sys.modules.pop("model", None)
    try:
        from model import build_model
    finally:
        sys.path.remove(str(work))
        sys.modules.pop("model", None)
    torch.save(build_model(2, pretrained=False).state_dict(), work / "start.pt")
    run = subprocess.run([sys.executable, "train.py", "--no-pretrained", "--epochs", "1",
                          "--batch-size", "2", "--resume", "start.pt", "--out", "best.pt"],
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "epoch 1/1" in run.stdout and "best val_acc=" in run.stdout
