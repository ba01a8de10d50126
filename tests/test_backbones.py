"""`train --model` and `--weights`: every network trains, checkpoints and resumes on the CPU;
pretrained weights load from a file or torchvision's cache, downloaded into it once (`--offline`:
never). The tests never touch the network: downloads are served by stand-ins."""

from __future__ import annotations

import email.message
import hashlib
import io
import json
import urllib.error
import urllib.request

import pytest
import torch
import torchvision

from ilt_audit.dataset import load_dataset
from ilt_audit.dataset.card import load_card
from ilt_audit.errors import OptionError
from ilt_audit.run.directory import read_config, read_metrics
from ilt_audit.training.loop import config_from_dict, predict, saved_normalisation, train
from ilt_audit.training.model import (
    BACKBONES,
    MODELS,
    ModelConfig,
    build_model,
    imagenet_file,
    load_pretrained,
    pretrained_state,
)

HEADS = {"colour": 3, "geometry": 2, "seg": 3, "depth": 1}  # the image card's tasks
QUICK = ("--epochs", 1, "--batch-size", 4, "--device", "cpu", "--workers", 0)


@pytest.fixture
def card32(make_image_card, tmp_path):
    """8 images of 32x32 with all four task types."""
    return make_image_card(tmp_path / "data", n=8, size=32)


def _torchvision_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision classifier's state dict (ImageNet head included), seeded away from the
    default initialisation."""
    torch.manual_seed(seed)
    classifier = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(torch.randn_like(p))
    return classifier.state_dict()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to download fails the test (``pytest.fail``, which no ``except Exception``
    turns into an error message)."""

    def refuse(*args, **kwargs):
        pytest.fail("ilt-audit tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# --- every network ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_each_model_trains_checkpoints_and_resumes_with_its_saved_choice(
    cli, card32, tmp_path, name
):
    run = tmp_path / "run"
    first = cli("train", card32, "--out", run, "--model", name, *QUICK)
    assert first.exit_code == 0, first.stderr
    assert (run / "checkpoint.pt").is_file()
    assert read_config(run)["options"]["model"]["name"] == name

    # --resume without --model: the saved network continues (the checkpoint fits no other)
    second = cli("train", card32, "--out", run, "--resume", "--epochs", 2, "--device", "cpu")
    assert second.exit_code == 0, second.stderr
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]
    assert (run / "trajectories" / "epoch-0002.parquet").is_file()
    assert read_config(run)["options"]["model"]["name"] == name


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("size", [(16, 16), (40, 24)])
def test_backbone_outputs_have_each_task_types_shape(image_card, name, size):
    model = build_model("image", 3, load_card(image_card).tasks, HEADS, ModelConfig(name=name))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out["colour"].shape == (2, 3) and out["geometry"].shape == (2, 2)
    assert out["seg"].shape == (2, 3, *size) and out["depth"].shape == (2, 1, *size)


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_trains_under_bf16_autocast(image_card, name):
    model = build_model("image", 3, load_card(image_card).tasks, HEADS, ModelConfig(name=name))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 16, 16))
    sum(o.float().mean() for o in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_card_without_dense_tasks_builds_no_decoder(image_card):
    tasks = tuple(t for t in load_card(image_card).tasks if not t.dense)
    model = build_model("image", 3, tasks, {"colour": 3, "geometry": 2}, ModelConfig("resnet18"))
    out = model(torch.randn(2, 3, 32, 32))
    sum(o.mean() for o in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())  # DDP needs every one used


# --- --weights FILE ----------------------------------------------------------------------------


def test_weights_file_loads_into_the_backbone(image_card, tmp_path):
    path = tmp_path / "resnet18.pt"
    saved = _torchvision_state("resnet18", seed=1)
    torch.save(saved, path)

    config = ModelConfig(name="resnet18", weights=str(path))
    state = pretrained_state(config)
    assert state is not None and "fc.weight" not in state  # the ImageNet classifier is left out
    model = build_model("image", 3, load_card(image_card).tasks, HEADS, config)
    load_pretrained(model, state)
    body = model.body.state_dict()
    assert set(body) == set(saved) - {"fc.weight", "fc.bias"}
    for key, tensor in body.items():
        torch.testing.assert_close(tensor, saved[key], rtol=0, atol=0)


def test_training_starts_from_the_weights_file(cli, card32, tmp_path):
    path = tmp_path / "convnext.pt"
    saved = _torchvision_state("convnext_tiny", seed=2)
    torch.save(saved, path)
    run = tmp_path / "run"
    # a vanishing learning rate: after one epoch the parameters are still the file's
    result = cli(
        "train", card32, "--out", run, "--model", "convnext_tiny", "--weights", path,
        "--lr", 1e-12, *QUICK,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert read_config(run)["options"]["model"] == {
        "name": "convnext_tiny",
        "weights": str(path),
        "hidden": 128,
        "depth": 2,
        "width": 16,
        "offline": False,
    }
    trained = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    weight = "features.1.0.block.0.weight"  # a convolution of the first stage
    torch.testing.assert_close(trained["body." + weight], saved[weight], rtol=0, atol=1e-6)


def test_resume_does_not_read_the_weights_file_again(card32, tmp_path, tiny):
    path = tmp_path / "resnet18.pt"
    torch.save(_torchvision_state("resnet18", seed=3), path)
    run = tmp_path / "run"
    config = tiny(epochs=1, batch_size=4, model=ModelConfig(name="resnet18", weights=str(path)))
    train(card32, run, config=config)
    path.unlink()  # the checkpoint holds the weights now
    train(card32, run, config=tiny(epochs=2), resume=True)
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]


def test_weights_of_another_backbone_exit_2_naming_file_and_key(cli, card32, tmp_path):
    path = tmp_path / "resnet18.pt"
    torch.save(_torchvision_state("resnet18", seed=4), path)
    run = tmp_path / "run"
    result = cli("train", card32, "--out", run, "--model", "resnet50", "--weights", path, *QUICK)
    assert result.exit_code == 2
    assert result.err == (
        f"Error: --weights {path}: 'layer1.0.conv1.weight' has shape (64, 64, 3, 3), "
        "--model resnet50 needs (64, 64, 1, 1)"
    )
    assert not run.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"not a tensor file", "not a state dict that loads with weights_only=True"),
        ({"conv1.weight": torch.zeros(64, 3, 7, 7)}, "no 'bn1.weight', which --model resnet18"),
        ([1, 2, 3], "not a state dict (names to tensors)"),
    ],
)
def test_a_wrong_weights_file_exits_2_naming_it(cli, card32, tmp_path, content, message):
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    result = cli(
        "train", card32, "--out", tmp_path / "run", "--model", "resnet18", "--weights", path
    )
    assert result.exit_code == 2
    assert result.err.startswith(f"Error: --weights {path}: {message}")


def test_an_unexpected_key_in_the_weights_file_is_named(tmp_path):
    path = tmp_path / "extra.pt"
    torch.save({**_torchvision_state("resnet18", seed=5), "decoder.weight": torch.zeros(1)}, path)
    with pytest.raises(
        OptionError, match="'decoder.weight' is not a parameter of --model resnet18"
    ):
        pretrained_state(ModelConfig(name="resnet18", weights=str(path)))


# --- --weights imagenet -------------------------------------------------------------------------

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
RESNET50_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    """An empty torchvision cache: the folder its ImageNet files go in (not created)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def downloads(monkeypatch):
    """torch.hub's download, replaced: it records ``(url, hash_prefix)`` and writes a resnet18
    state dict where it was asked to."""
    calls: list[tuple[str, str | None]] = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        torch.save(_torchvision_state("resnet18", seed=7), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return calls


def test_imagenet_weights_in_the_cache_are_used(
    card32, tmp_path, tiny, checkpoints, monkeypatch, no_network
):
    path, url = imagenet_file("resnet18")
    assert (path, url) == (checkpoints / "resnet18-f37072fd.pth", RESNET18_URL)
    path.parent.mkdir(parents=True)
    saved = _torchvision_state("resnet18", seed=6)
    torch.save(saved, path)

    for offline in (False, True):  # --offline needs no network when the file is there
        config = ModelConfig(name="resnet18", weights="imagenet", offline=offline)
        state = pretrained_state(config)
        assert state is not None
        torch.testing.assert_close(state["conv1.weight"], saved["conv1.weight"], rtol=0, atol=0)
    config = tiny(epochs=1, batch_size=4, model=ModelConfig(name="resnet18", weights="imagenet"))
    assert train(card32, tmp_path / "run", config=config).epochs == 1


def test_imagenet_weights_missing_from_the_cache_are_downloaded_once_hash_checked(
    cli, card32, tmp_path, checkpoints, downloads, monkeypatch
):
    monkeypatch.setenv("ILT_AUDIT_OFFLINE", "0")  # 0 is not offline
    run = tmp_path / "run"
    # a vanishing learning rate: after one epoch the parameters are still the downloaded file's
    result = cli(
        "train", card32, "--out", run, "--model", "resnet18", "--weights", "imagenet",
        "--lr", 1e-12, *QUICK,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert downloads == [(RESNET18_URL, "f37072fd")]  # the hash check on: the digits in the name
    path = checkpoints / "resnet18-f37072fd.pth"
    assert result.stderr.splitlines()[0] == (
        f"Downloading torchvision's ImageNet weights for resnet18 (once): {RESNET18_URL} to {path}"
    )
    assert read_config(run)["options"]["model"]["weights"] == "imagenet"
    trained = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    saved = torch.load(path, weights_only=True)
    torch.testing.assert_close(
        trained["body.conv1.weight"], saved["conv1.weight"], rtol=0, atol=1e-6
    )

    # the cached file serves every later run; a resumed run has its weights in its checkpoint
    assert pretrained_state(ModelConfig(name="resnet18", weights="imagenet")) is not None
    resumed = cli("train", card32, "--out", run, "--resume", "--epochs", 2, "--device", "cpu")
    assert resumed.exit_code == 0, resumed.stderr
    assert len(downloads) == 1


@pytest.mark.parametrize("how", ["--offline", "ILT_AUDIT_OFFLINE=1"])
def test_offline_with_the_weights_not_in_the_cache_exits_2_naming_the_file_and_its_url(
    cli, card32, tmp_path, checkpoints, monkeypatch, no_network, how
):
    if how == "--offline":
        args: tuple[str, ...] = ("--offline",)
    else:
        monkeypatch.setenv("ILT_AUDIT_OFFLINE", "1")
        args = ()
    run = tmp_path / "run"
    result = cli(
        "train", card32, "--out", run, "--model", "resnet50", "--weights", "imagenet", *args
    )
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "Error: --weights imagenet: torchvision's ImageNet weights for resnet50 are not in its "
        "cache, and --offline (or ILT_AUDIT_OFFLINE=1) forbids downloading them; on a machine "
        f"with a network, download {RESNET50_URL} and put it at "
        f"{checkpoints / 'resnet50-11ad3fa6.pth'}"
    ]
    assert not checkpoints.exists()
    assert not (run / "config.json").exists()


class _Response(io.BytesIO):
    """What ``urlopen`` returns, as far as torch.hub reads it."""

    def info(self) -> email.message.Message:
        return email.message.Message()  # no Content-Length


_WRONG_FILE = io.BytesIO()
torch.save({"conv1.weight": torch.zeros(1)}, _WRONG_FILE)
_WRONG_DIGEST = hashlib.sha256(_WRONG_FILE.getvalue()).hexdigest()


@pytest.mark.parametrize(
    ("served", "cause"),
    [
        (
            urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
            "<urlopen error [Errno -3] Temporary failure in name resolution>",
        ),
        (
            urllib.error.HTTPError(RESNET18_URL, 403, "Forbidden", email.message.Message(), None),
            "HTTP Error 403: Forbidden",
        ),
        (
            _WRONG_FILE.getvalue(),
            f'invalid hash value (expected "f37072fd", got "{_WRONG_DIGEST}")',
        ),
    ],
    ids=["no network", "HTTP error", "wrong hash"],
)
def test_a_failed_download_exits_2_and_leaves_nothing_in_the_cache(
    cli, card32, tmp_path, checkpoints, monkeypatch, served, cause
):
    def urlopen(request):  # torch.hub's own download runs, over this stand-in for the network
        assert request.full_url == RESNET18_URL
        if isinstance(served, Exception):
            raise served
        return _Response(served)

    monkeypatch.setattr(torch.hub, "urlopen", urlopen)
    run = tmp_path / "run"
    result = cli("train", card32, "--out", run, "--model", "resnet18", "--weights", "imagenet")
    assert result.exit_code == 2
    path = checkpoints / "resnet18-f37072fd.pth"
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: --weights imagenet: downloading {RESNET18_URL} failed: {cause}; on a machine "
        f"with a network, download {RESNET18_URL} and put it at {path}, then train with --offline"
    ]
    assert list(checkpoints.iterdir()) == []  # neither the cached name nor a partial file
    assert not (run / "config.json").exists()


# --- choices and old runs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--model", "vgg16"),
            "Error: unknown model 'vgg16'; choose one of small, resnet18, resnet50, convnext_tiny",
        ),
        (
            ("--weights", "imagenet"),
            "Error: --weights imagenet: the small network has no pretrained weights; choose a "
            "backbone with --model (resnet18, resnet50, convnext_tiny)",
        ),
    ],
)
def test_bad_model_options_exit_2(cli, card32, tmp_path, args, message):
    result = cli("train", card32, "--out", tmp_path / "run", *args)
    assert result.exit_code == 2
    assert result.err == message
    assert not (tmp_path / "run").exists()


def test_a_backbone_on_a_features_card_exits_2(cli, features_card, tmp_path):
    run = tmp_path / "run"
    result = cli("train", features_card, "--out", run, "--model", "resnet18", "--device", "cpu")
    assert result.exit_code == 2
    assert result.err == (
        "Error: --model resnet18 needs images; a features card trains the small network (an MLP): "
        "leave --model out"
    )
    assert not (run / "config.json").exists()


def test_a_config_without_a_model_name_is_the_small_network():
    config = config_from_dict({"epochs": 3, "model": {"hidden": 16, "depth": 1, "width": 4}})
    assert config.model == ModelConfig(name="small", weights=None, hidden=16, depth=1, width=4)


def test_a_run_written_before_model_names_predicts_and_resumes(card32, tmp_path, tiny):
    run = tmp_path / "run"
    train(card32, run, config=tiny(epochs=1, batch_size=4))
    # as an earlier version wrote them: no model name or weights in config.json or the checkpoint
    saved = json.loads((run / "config.json").read_text())
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    for options in (saved["options"], state["config"]["options"]):
        del options["model"]["name"], options["model"]["weights"]
    (run / "config.json").write_text(json.dumps(saved))
    torch.save(state, run / "checkpoint.pt")

    data = load_dataset(card32, norm=saved_normalisation(run))
    assert predict(run, data, torch.arange(2))["seg"].shape == (2, 3, 32, 32)
    train(card32, run, config=tiny(epochs=2), resume=True)
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]
    assert read_config(run)["options"]["model"]["name"] == "small"
