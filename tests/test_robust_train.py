"""Training and evaluation under bad input and faults: labels matched by class name, arguments
checked before any work, nothing non-finite or half-written left as the checkpoint, run folders
that are not shared or silently replaced, and one-line errors (exit 130 for Ctrl-C) instead of
tracebacks.

The fault injections (a process SIGKILLed while it saves, a full disk, a NaN weight, Ctrl-C) each
check that ``last.pt`` is the last finite state, that the message says which step it is from, and
that ``--resume`` continues from it. Tiny models on 64 px images: seconds per run.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import hiera
import hiera.train.engine as engine
import hiera.weights
from hiera.cli import main
from hiera.data.images import random_unit_mask
from hiera.data.synthetic import CLASSES, make_dataset
from hiera.train import commands
from hiera.train.commands import evaluate, finetune, pretrain
from hiera.train.engine import RunFolderBusy, TrainingDiverged
from hiera.weights import CheckpointError

TINY = dict(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1), q_pool=1, mask_unit_size=(4, 4),
            mask_unit_attn=(True, False, False))
DECODER = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1)
MAE = dict(TINY, **DECODER)
FAST = dict(progress=False, num_workers=0, log_every=1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), 8, 4, size=64, seed=0)  # 64 train, 32 val images


def run_mae(data, out, epochs=2, **kw):
    """4 steps an epoch at batch 16."""
    args = dict(model="custom", config=MAE, epochs=epochs, batch_size=16, lr=1e-3, save_every=2, **FAST)
    args.update(kw)
    return pretrain(data.train_dir, out, **args)


def cli_args(data, out, *extra, epochs=2):
    """``hiera pretrain`` of the tiny MAE; ``data`` is the dataset (its train_dir) or a path."""
    source = getattr(data, "train_dir", data)
    return ["pretrain", "--data", str(source), "--model", "custom", "--config", json.dumps(MAE),
            "--epochs", str(epochs), "--batch-size", "16", "--lr", "1e-3", "--save-every", "2", "--log-every", "1",
            "--workers", "0", "--no-progress", "--out", str(out), *extra]


def one_line_error(capsys, argv, code=1):
    """Run the CLI; it must exit with ``code`` and print exactly one line, ``hiera CMD: error: ...``."""
    try:
        rc = main(argv)
    except KeyboardInterrupt:  # (pytest would take it for the user's and stop the session)
        pytest.fail("KeyboardInterrupt escaped the command")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith(f"hiera {argv[0]}: error: "), err
    return lines[0]


def train_losses(out):
    return [r for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def all_finite(state):
    return all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def load(path):
    return torch.load(path, weights_only=True)


def temp_files(out):
    return sorted(p.name for p in Path(out).glob(".*.tmp*"))


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished 2-epoch MAE run (8 steps, checkpoints at every 2)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run_mae(data, out)
    return out


# ------------------------------------------------------------------------------ 1. labels by class name
def constant_classifier(folder, predict: str, names=CLASSES, save_names=True):
    """A model folder whose model always predicts class ``predict``."""
    torch.manual_seed(0)
    net = hiera.Hiera(**TINY, num_classes=len(names))
    with torch.no_grad():
        net.head.projection.weight.zero_()
        net.head.projection.bias.fill_(-10.0)
        net.head.projection.bias[list(names).index(predict)] = 10.0
    net.save_pretrained(folder)
    if save_names:
        (Path(folder) / "classes.txt").write_text("\n".join(names) + "\n")
    return folder


def subset(src, dst, drop=(), add=()):
    dst = Path(dst)
    for name in CLASSES:
        if name not in drop:
            shutil.copytree(Path(src) / name, dst / name)
    for name in add:
        (dst / name).mkdir(parents=True)
        Image.new("RGB", (64, 64), (90, 20, 200)).save(dst / name / "x.png")
    return dst


def test_evaluate_matches_labels_by_class_name_not_folder_position(data, tmp_path):
    model = constant_classifier(tmp_path / "model", predict="rings")
    full = evaluate(data.val_dir, weights=model)
    assert full["acc1"] == pytest.approx(100 / 8) and full["per_class_acc1"]["rings"] == 100
    # Without the "rings" folder every image is wrong: re-indexing the 7 folders found made
    # "triangle" take rings' index and scored 1 in 7 of the same predictions as right.
    without = evaluate(subset(data.val_dir, tmp_path / "val7", drop=["rings"]), weights=model)
    assert without["n"] == 7 * 4 and without["acc1"] == 0.0
    assert set(without["per_class_acc1"]) == set(CLASSES) - {"rings"} and without["missing_classes"] == ["rings"]
    assert {p["predicted"] for p in without["confused"]} == {"rings"} and without["assumed"] is None


def test_evaluate_refuses_a_class_the_model_does_not_know(data, tmp_path, capsys):
    model = constant_classifier(tmp_path / "model", predict="disc")
    extra = subset(data.val_dir, tmp_path / "val", add=["zebra"])
    with pytest.raises(ValueError, match=r"'zebra' that the model .*classes.txt.* does not know"):
        evaluate(extra, weights=model)
    line = one_line_error(capsys, ["evaluate", "--data", str(extra), "--weights", str(model), "--workers", "0"])
    assert "zebra" in line


def test_evaluate_a_model_without_class_names_only_where_unambiguous(data, tmp_path, capsys):
    model = constant_classifier(tmp_path / "model", predict="rings", save_names=False)
    full = evaluate(data.val_dir, weights=model)  # 8 folders for 8 outputs: sorted order, said so
    assert full["acc1"] == pytest.approx(100 / 8) and "sorted order" in full["assumed"]
    seven = subset(data.val_dir, tmp_path / "val7", drop=["rings"])
    with pytest.raises(ValueError, match=r"8 outputs but no class names.*7 classes.*--classes"):
        evaluate(seven, weights=model)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    assert evaluate(seven, weights=model, classes=names)["acc1"] == 0.0
    assert main(["evaluate", "--data", str(seven), "--weights", str(model), "--classes", str(names),
                 "--workers", "0"]) == 0
    assert "top-1 0.00%" in capsys.readouterr().out


def test_finetune_validates_by_class_name_and_evaluate_reads_names_from_last_pt(data, tmp_path):
    val = subset(data.val_dir, tmp_path / "val7", drop=["cross"])
    result = finetune(data.train_dir, tmp_path / "ft", val=val, model="custom", config=TINY, epochs=1,
                      batch_size=16, lr=1e-3, mixup=False, **FAST)
    by_folder = evaluate(val, weights=tmp_path / "ft" / "model")
    by_checkpoint = evaluate(val, weights=tmp_path / "ft" / "last.pt")  # the classes recorded in it
    assert result["val_acc1"] == pytest.approx(by_folder["acc1"]) == pytest.approx(by_checkpoint["acc1"])
    assert by_checkpoint["classes"] == list(CLASSES)
    with pytest.raises(ValueError, match=r"'zebra' that the training data .* does not know"):
        finetune(data.train_dir, tmp_path / "ft2", val=subset(data.val_dir, tmp_path / "val9", add=["zebra"]),
                 model="custom", config=TINY, epochs=1, batch_size=16, **FAST)
    assert not (tmp_path / "ft2").exists()  # refused before anything was written


# ------------------------------------------------------------------------------ 2. mask ratio
def test_mask_ratios_that_cannot_work_are_refused_before_any_work(data, tmp_path, capsys):
    out = tmp_path / "r"
    assert "[0, 1)" in one_line_error(capsys, cli_args(data, out, "--mask-ratio", "1.5"))
    assert "masks no mask unit" in one_line_error(capsys, cli_args(data, out, "--mask-ratio", "0"))
    big = json.dumps(dict(MAE, input_size=[112, 112]))  # 7 x 7 = 49 mask units
    args = cli_args(data, out, "--mask-ratio", "0.98")
    args[args.index("--config") + 1] = big
    line = one_line_error(capsys, args)
    assert "keeps no mask unit of 49" in line and "0.9795" in line
    assert not out.exists()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        run_mae(data, out, mask_ratio=1.5)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):  # the data pipeline never
        random_unit_mask(16, 1.5, torch.Generator())  # turns 1.5 into 0.5
    with pytest.raises(ValueError, match="keeps no mask unit of 16"):
        random_unit_mask(16, 0.97, torch.Generator())


# ------------------------------------------------------------------------------ 3. ignored arguments
@pytest.mark.parametrize("extra, words", [
    (["--lr", "-0.001"], "--lr must be a positive learning rate"),
    (["--save-every", "-2"], "--save-every must be a whole number >= 0"),
    (["--log-every", "0"], "--log-every must be a whole number >= 1"),
    (["--frames", "8"], "--frames is for video runs"),
    (["--frame-stride", "2"], "--frame-stride is for video runs"),
    (["--batch-size", "0"], "--batch-size must be a whole number >= 1"),
    (["--accum", "0"], "--accum must be a whole number >= 1"),
    (["--accum", "3"], "divisible by processes x --accum"),
    (["--config", "{input_size: 64}"], "--config is not valid JSON"),
    (["--config", "[64, 64]"], "--config must be a JSON object"),
    (["--config", '{"no_such_option": 1}'], "--config does not fit the model"),
    (["--resume", "--overwrite"], "contradict"),
])
def test_bad_arguments_are_one_line_errors_before_any_work(data, tmp_path, capsys, extra, words):
    args = cli_args(data, tmp_path / "r", *extra)
    if "--config" in extra:  # the later --config wins in argparse; keep only the bad one
        i = args.index("--config")
        del args[i:i + 2]
    assert words in one_line_error(capsys, args)
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_device_cuda_without_a_gpu(data, tmp_path, capsys):
    # (the message every command gives: hiera.tools.predict.resolve_device)
    line = one_line_error(capsys, cli_args(data, tmp_path / "r", "--device", "cuda"))
    assert "device 'cuda' asked for, but torch sees no CUDA GPU here; available: cpu" in line
    line = one_line_error(capsys, ["evaluate", "--data", str(data.val_dir), "--model", "hiera_tiny_224", "--device", "cuda"])
    assert "torch sees no CUDA GPU here" in line
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


# ------------------------------------------------------------------------------ 4. evaluate needs a head
def test_evaluate_refuses_an_mae_checkpoint(data, finished, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="head"):
        evaluate(data.val_dir, weights=finished / "last.pt")
    line = one_line_error(capsys, ["evaluate", "--data", str(data.val_dir), "--weights", str(finished / "model")])
    assert "head" in line


# ------------------------------------------------------------------------------ 5. divergence
def nan_after_update(monkeypatch, step):
    """Make a weight NaN in the update that becomes step ``step`` (counted as in metrics.jsonl)."""
    build = commands.build_optimizer

    def poisoned(model, *args, **kwargs):
        opt = build(model, *args, **kwargs)
        count = [0]

        def hook(optimizer, *_):
            count[0] += 1
            if count[0] == step:
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = float("nan")
        opt.register_step_post_hook(hook)
        return opt

    monkeypatch.setattr(commands, "build_optimizer", poisoned)


def test_nan_mid_run_keeps_the_last_finite_checkpoint_and_resume_continues(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    nan_after_update(monkeypatch, step=4)  # a save step: the old code saved the NaN weights, then claimed otherwise
    line = one_line_error(capsys, cli_args(data, out))
    assert "not finite after step 4" in line and f"last good checkpoint is {out / 'last.pt'}, from step 2" in line
    state = load(out / "last.pt")
    assert state["step"] == 2 and all_finite(state)
    monkeypatch.undo()
    assert main(cli_args(data, out, "--resume")) == 0
    state = load(out / "last.pt")
    assert state["step"] == 8 and all_finite(state)
    assert [r["step"] for r in train_losses(out)] == list(range(1, 9))


def test_divergence_before_the_first_checkpoint_claims_none(data, tmp_path, monkeypatch):
    nan_after_update(monkeypatch, step=1)
    with pytest.raises(TrainingDiverged, match=r"not finite after step 1: training stopped. No checkpoint was written"):
        run_mae(data, tmp_path / "r")
    assert not (tmp_path / "r" / "last.pt").exists()


def test_non_finite_gradients_stop_before_the_update(data, tmp_path, monkeypatch):
    from hiera.train.engine import MAETask

    loss, calls = MAETask.loss, [0]

    def overflowing(self, net, batch):  # a finite loss whose gradient is infinite in step 3
        calls[0] += 1
        value = loss(self, net, batch)
        if calls[0] == 3:
            value.register_hook(lambda g: g * float("inf"))
        return value
    monkeypatch.setattr(MAETask, "loss", overflowing)
    with pytest.raises(TrainingDiverged, match=r"gradient of .* is not finite at step 3 \(the loss is [0-9.]+\).*"
                                               r"last good checkpoint .*from step 2"):
        run_mae(data, tmp_path / "r")
    state = load(tmp_path / "r" / "last.pt")
    assert state["step"] == 2 and all_finite(state)


# ------------------------------------------------------------------------------ 6. run folders
def test_a_finished_run_is_not_overwritten_without_resume_or_overwrite(data, finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = {p: (out / p).read_bytes() for p in ("last.pt", "metrics.jsonl", "model/model.safetensors")}
    line = one_line_error(capsys, cli_args(data, out, epochs=1))
    assert "already holds a run at step 8" in line and "--resume" in line and "--overwrite" in line
    assert all((out / p).read_bytes() == b for p, b in before.items())
    assert main(cli_args(data, out, "--overwrite", epochs=1)) == 0
    assert [r["step"] for r in train_losses(out)] == [1, 2, 3, 4]  # only the new run's log
    assert load(out / "last.pt")["step"] == 4


def test_two_runs_cannot_share_a_run_folder(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hiera.train.engine import lock_run_folder\n"
         "with lock_run_folder(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)", str(out)],
        env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=rf"in use by another run \(process {holder.pid} on"):
            run_mae(data, out)
        line = one_line_error(capsys, cli_args(data, out))
        assert f"process {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "last.pt").exists()
    run_mae(data, out, epochs=1)  # the lock died with its holder
    assert load(out / "last.pt")["step"] == 4


# ------------------------------------------------------------------------------ 7. resuming from damaged files
def damaged_copies(finished, tmp_path):
    good = (finished / "last.pt").read_bytes()
    cases = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "random": os.urandom(4096),
    }
    for name, content in cases.items():
        out = tmp_path / name
        shutil.copytree(finished, out)
        (out / "last.pt").write_bytes(content)
        yield name, out
    out = tmp_path / "foreign"
    shutil.copytree(finished, out)
    torch.save({"model": load(finished / "last.pt")["model"]}, out / "last.pt")  # weights, not a run
    yield "foreign", out


def test_resume_from_a_damaged_checkpoint_names_the_file(data, finished, tmp_path, capsys):
    words = {"empty": "is empty", "truncated": "cannot be read as a checkpoint", "random": "cannot be read",
             "foreign": "is not a training checkpoint"}
    for name, out in damaged_copies(finished, tmp_path):
        line = one_line_error(capsys, cli_args(data, out, "--resume", epochs=3))
        assert str(out / "last.pt") in line and words[name] in line, (name, line)
    out = tmp_path / "other"
    shutil.copytree(finished, out)
    args = cli_args(data, out, "--resume", epochs=3)
    args[args.index("--config") + 1] = json.dumps(dict(MAE, embed_dim=24))
    line = one_line_error(capsys, args)
    assert "another model configuration (embed_dim 16 there, 24 here)" in line


def test_resume_works_past_a_half_written_metrics_line(data, finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "epoch": 2.25, "spl')  # a crash in mid-write
    assert main(cli_args(data, out, "--resume", epochs=3)) == 0
    assert [r["step"] for r in train_losses(out)] == list(range(1, 13))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines.insert(3, "{broken")
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    line = one_line_error(capsys, cli_args(data, out, "--resume", epochs=4))
    assert f"{out / 'metrics.jsonl'}:4 is not a metrics record" in line


# ------------------------------------------------------------------------------ 8. disks
def test_kill_during_a_save_leaves_the_previous_checkpoint_and_resume_cleans_up(data, tmp_path):
    """A real process SIGKILLed while it writes its second checkpoint (step 4)."""
    out = tmp_path / "run"
    code = ("import os, signal, sys, torch\n"
            "real, calls = torch.save, [0]\n"
            "def dying(obj, f, *a, **k):\n"
            "    calls[0] += 1\n"
            "    if calls[0] == 2:\n"
            "        f.write(b'PK half a checkpoint'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return real(obj, f, *a, **k)\n"
            "torch.save = dying\n"
            "from hiera.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    killed = subprocess.run([sys.executable, "-c", code, *cli_args(data, out)], env=ENV, capture_output=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = load(out / "last.pt")
    assert state["step"] == 2 and all_finite(state) and len(temp_files(out)) == 1  # the half-written one
    assert main(cli_args(data, out, "--resume")) == 0
    assert load(out / "last.pt")["step"] == 8 and temp_files(out) == []


class _FailingFile:
    """A checkpoint file whose writes fail after a few bytes, as on a full disk (or with Ctrl-C)."""

    def __init__(self, f, error):
        self.f, self.error = f, error

    def write(self, data):
        self.f.write(bytes(data)[:10])
        raise self.error()

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False


def fail_checkpoint_writes(monkeypatch, error, after: int):
    """Writes of temporary checkpoint files fail from the ``after + 1``-th save on."""
    opened = [0]

    def opening(file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        if ".last.pt.tmp" in str(file) and "w" in mode:
            opened[0] += 1
            if opened[0] > after:
                return _FailingFile(f, error)
        return f
    monkeypatch.setattr(hiera.weights, "open", opening, raising=False)  # where checkpoints are written


def test_full_disk_while_saving_injected(data, tmp_path, monkeypatch, capsys):
    """ENOSPC from the second checkpoint's writes: the temp file goes, last.pt stays at step 2."""
    out = tmp_path / "run"
    fail_checkpoint_writes(monkeypatch, lambda: OSError(errno.ENOSPC, "No space left on device"), after=1)
    line = one_line_error(capsys, cli_args(data, out))
    assert "could not write the checkpoint of step 4" in line and "the disk is full" in line
    assert f"the last checkpoint is {out / 'last.pt'}, from step 2 (unchanged)" in line
    assert load(out / "last.pt")["step"] == 2 and temp_files(out) == []
    monkeypatch.undo()
    assert main(cli_args(data, out, "--resume")) == 0 and load(out / "last.pt")["step"] == 8


def _mount_tmpfs(where, options):
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and `mount`")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _umount(where):
    subprocess.run(["umount", str(where)], check=False)


def test_full_disk_while_saving_on_a_real_small_disk(data, finished, tmp_path, capsys):
    size = (finished / "last.pt").stat().st_size
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, f"size={(size * 3 // 2 // 4096 + 16) * 4096}")  # one checkpoint fits, not two
    try:
        out = disk / "run"
        line = one_line_error(capsys, cli_args(data, out))
        assert "could not write the checkpoint" in line and "the disk is full" in line
        state = load(out / "last.pt")
        assert state["step"] == 2 and all_finite(state) and temp_files(out) == []
        assert "from step 2" in line
        moved = tmp_path / "moved"
        shutil.copytree(out, moved)
    finally:
        _umount(disk)
    assert main(cli_args(data, moved, "--resume")) == 0 and load(moved / "last.pt")["step"] == 8


def test_read_only_out_and_out_that_is_a_file(data, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert "is a file, not a folder" in one_line_error(capsys, cli_args(data, tmp_path / "file"))
    disk = tmp_path / "ro"
    _mount_tmpfs(disk, "ro,size=64k")
    try:
        assert "Read-only file system" in one_line_error(capsys, cli_args(data, disk / "run"))
        assert "cannot write in the run folder" in one_line_error(capsys, cli_args(data, disk))
    finally:
        _umount(disk)


# ------------------------------------------------------------------------------ 9. more bad input
def test_bad_data_and_outputs_are_one_line_errors(data, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad"
    for c in ("a", "b"):
        (bad / c).mkdir(parents=True)
        for i in range(10):
            (bad / c / f"{i}.png").write_bytes(b"not an image")
    line = one_line_error(capsys, cli_args(bad, tmp_path / "r"))
    assert "none of the 20 files" in line and "could be read" in line and not (tmp_path / "r").exists()
    image = next(Path(data.val_dir, "disc").glob("*.png"))
    line = one_line_error(capsys, cli_args(image, tmp_path / "r"))
    assert "is an image file, not a dataset" in line
    assert "is an image file" in one_line_error(capsys, ["evaluate", "--data", str(image), "--model", "hiera_tiny_224"])
    # --json is checked before the model is even loaded, not after the whole evaluation
    monkeypatch.setattr(commands, "load_model", lambda *a, **k: pytest.fail("evaluated before checking --json"))
    line = one_line_error(capsys, ["evaluate", "--data", str(data.val_dir), "--model", "hiera_tiny_224",
                                   "--json", str(tmp_path)])
    assert "--json" in line and "is a folder" in line
    line = one_line_error(capsys, ["evaluate", "--data", str(data.val_dir), "--model", "hiera_tiny_224",
                                   "--json", str(tmp_path / "nope" / "r.json")])
    assert "does not exist" in line
    line = one_line_error(capsys, ["evaluate", "--data", str(data.val_dir), "--model", "hiera_tiny_224",
                                   "--batch-size", "0"])
    assert "--batch-size must be a whole number >= 1" in line
    assert "--per-class must be a whole number >= 1" in one_line_error(
        capsys, ["quickstart", "--out", str(tmp_path / "qs"), "--per-class", "0", "--no-progress"])
    assert "fewer than one batch of 64" in one_line_error(
        capsys, ["quickstart", "--out", str(tmp_path / "qs"), "--per-class", "2", "--no-progress"])


# ------------------------------------------------------------------------------ 10. Ctrl-C
def interrupt_at(monkeypatch, step: int) -> None:
    """Ctrl-C right after step ``step`` is logged."""
    from hiera.train.engine import Trainer

    log = Trainer.log

    def interrupted(self, record):
        log(self, record)
        if record["step"] == step:
            raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "log", interrupted)


def test_ctrl_c_is_a_clean_exit_130_naming_the_checkpoint(data, tmp_path, monkeypatch, capsys):
    interrupt_at(monkeypatch, 3)
    out = tmp_path / "run"
    line = one_line_error(capsys, cli_args(data, out), code=130)
    last = out / "last.pt"
    assert f"interrupted at step 3; the last checkpoint is {last}, from step 2; continue with --resume" in line
    monkeypatch.undo()
    assert main(cli_args(data, out, "--resume")) == 0 and load(out / "last.pt")["step"] == 8
    # Ctrl-C during a save: the temp file goes, the previous checkpoint stays.
    fail_checkpoint_writes(monkeypatch, KeyboardInterrupt, after=0)
    line = one_line_error(capsys, cli_args(data, out, "--resume", epochs=3), code=130)
    assert "from step 8" in line and temp_files(out) == [] and load(out / "last.pt")["step"] == 8


def test_ctrl_c_in_finetune(data, tmp_path, monkeypatch, capsys):
    interrupt_at(monkeypatch, 2)
    out = tmp_path / "ft"
    args = ["finetune", "--data", str(data.train_dir), "--model", "custom", "--config", json.dumps(TINY),
            "--epochs", "1", "--batch-size", "16", "--save-every", "1", "--log-every", "1", "--no-mixup",
            "--workers", "0", "--no-progress", "--out", str(out)]
    line = one_line_error(capsys, args, code=130)
    # Step 2 was logged, not yet saved: the message says the checkpoint on disk is from step 1.
    assert f"interrupted at step 2; the last checkpoint is {out / 'last.pt'}, from step 1" in line
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0 and load(out / "last.pt")["step"] == 4


def test_ctrl_c_in_evaluate(data, tmp_path, monkeypatch, capsys):
    model = constant_classifier(tmp_path / "model", predict="disc")
    monkeypatch.setattr(commands, "evaluate_classifier", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    line = one_line_error(capsys, ["evaluate", "--data", str(data.val_dir), "--weights", str(model),
                                   "--json", str(tmp_path / "r.json")], code=130)
    assert "interrupted" in line and not (tmp_path / "r.json").exists()


def test_sigint_to_a_real_run(data, tmp_path):
    out = tmp_path / "run"
    # A run far too long to end before the signal. Its SIGINT handling starts as a terminal's would:
    # a suite launched in the background (`cmd &` from a script) passes SIGINT down *ignored*, and
    # Python then never raises KeyboardInterrupt, which is not what a user's Ctrl-C meets.
    proc = subprocess.Popen([sys.executable, "-m", "hiera.cli", *cli_args(data, out, epochs=2000)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not ((out / "last.pt").exists() and len(train_losses(out)) >= 3):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:  # a run that ignored the signal must not go on after the test
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hiera pretrain: error: interrupted") and "Traceback" not in err
    step = load(out / "last.pt")["step"]
    assert f"from step {step}; continue with --resume" in lines[0]
