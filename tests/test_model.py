"""Tests of raymh.model: shapes per backbone/stride, multi-head routing, weights files, input errors, groups."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision

from raymh.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiHeadDeepLab,
    ResNetBackbone,
    count_parameters,
    normalize_uint8,
    param_groups,
)

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"cityscapes": 19, "bdd": 19, "custom": 7}


@pytest.fixture(scope="module")
def model() -> MultiHeadDeepLab:
    torch.manual_seed(0)
    return MultiHeadDeepLab(CLASSES, backbone="resnet18", head_depth=2, proj_dim=32).eval()


@pytest.mark.parametrize(
    ("backbone", "output_stride"),
    [(name, os) for name in ("resnet18", "resnet34", "resnet50") for os in (16, 8)] + [("resnet101", 8)],
)
def test_output_shapes_per_backbone_and_stride(backbone: str, output_stride: int) -> None:
    m = MultiHeadDeepLab({"a": 5}, backbone=backbone, output_stride=output_stride, head_depth=1, proj_dim=16)
    m.eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        feats = m.backbone(x)
        out = m(x, "a")
    assert tuple(feats["high"].shape[-2:]) == (32 // output_stride, 48 // output_stride)
    assert (
        feats["low"].shape[1] == m.backbone.low_channels and feats["high"].shape[1] == m.backbone.out_channels
    )
    assert out["logits"].shape == (1, 5, 8, 12)
    assert out["proj"].shape == (1, 16, 4, 6)


def test_basic_block_dilation_keeps_receptive_field_dense() -> None:
    """resnet18 at OS8: layer3/4 convs lose their stride and gain dilation 2/4 (first conv keeps the previous)."""
    bb = ResNetBackbone("resnet18", output_stride=8)
    assert bb.layer3[0].conv1.stride == (1, 1) and bb.layer3[0].downsample[0].stride == (1, 1)
    assert bb.layer3[0].conv1.dilation == (1, 1) and bb.layer3[0].conv2.dilation == (2, 2)
    assert bb.layer4[0].conv1.dilation == (2, 2) and bb.layer4[1].conv1.dilation == (4, 4)
    assert bb.layer2[0].conv1.stride == (2, 2)


def test_sizes_divisible_by_8_only_give_exact_quarter_and_eighth(model: MultiHeadDeepLab) -> None:
    x = torch.randn(2, 3, 40, 56)  # 40 and 56 are not multiples of 16
    with torch.no_grad():
        out = model(x, "custom")
    assert out["logits"].shape == (2, 7, 10, 14)
    assert out["proj"].shape == (2, 32, 5, 7)


def test_per_domain_class_counts_and_unit_norm_proj(model: MultiHeadDeepLab) -> None:
    assert model.domains == ("cityscapes", "bdd", "custom")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for domain, classes in CLASSES.items():
            out = model(x, domain)
            assert out["logits"].shape[1] == classes
            norms = out["proj"].norm(dim=1)
            torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    assert model.trunk(x).shape == (2, 304, 8, 8)


def test_forward_domains_matches_per_domain_forward_in_eval(model: MultiHeadDeepLab) -> None:
    torch.manual_seed(1)
    images = {"custom": torch.randn(1, 3, 32, 32), "cityscapes": torch.randn(3, 3, 32, 32)}
    with torch.no_grad():
        joint = model.forward_domains(images)
        assert list(joint) == ["custom", "cityscapes"]
        for domain, x in images.items():
            alone = model(x, domain)
            for key in ("logits", "proj"):
                # Only float re-association differs (oneDNN blocks batches of 4 and 1 differently).
                torch.testing.assert_close(joint[domain][key], alone[key], atol=1e-4, rtol=1e-4)


def test_forward_with_a_dict_goes_through_forward_domains(model: MultiHeadDeepLab) -> None:
    images = {"bdd": torch.randn(2, 3, 32, 32), "custom": torch.randn(1, 3, 32, 32)}
    with torch.no_grad():
        joint = model.forward_domains(images)
        via_forward = model(images)
        separate = model(images, joint=False)
    for domain in images:
        torch.testing.assert_close(via_forward[domain]["logits"], joint[domain]["logits"])
        torch.testing.assert_close(separate[domain]["proj"], joint[domain]["proj"], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="needs a domain name"):
        model(images["bdd"])


def test_forward_domains_runs_each_head_on_its_own_slice_only() -> None:
    m = MultiHeadDeepLab(CLASSES, backbone="resnet18", head_depth=1, proj_dim=8).train()
    seen: dict[str, int] = {}
    for domain, head in m.heads.items():
        head.register_forward_hook(lambda mod, inp, out, d=domain: seen.__setitem__(d, inp[0].shape[0]))
    out = m.forward_domains({"cityscapes": torch.randn(2, 3, 32, 32), "custom": torch.randn(1, 3, 32, 32)})
    assert seen == {"cityscapes": 2, "custom": 1}
    out["custom"]["logits"].sum().backward()
    assert (
        m.heads["bdd"].classifier.weight.grad is None and m.heads["cityscapes"].classifier.weight.grad is None
    )
    assert m.heads["custom"].classifier.weight.grad is not None
    assert m.backbone.conv1.weight.grad is not None


def test_channels_last_and_bf16_autocast(model: MultiHeadDeepLab) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x, "bdd")
        m = model.to(memory_format=torch.channels_last)
        try:
            xc = x.contiguous(memory_format=torch.channels_last)
            cl = m(xc, "bdd")
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf = m(xc, "bdd")
        finally:
            model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(cl["logits"], ref["logits"], atol=1e-4, rtol=1e-4)
    assert bf["logits"].dtype == torch.bfloat16 and bf["logits"].shape == ref["logits"].shape
    assert bf["proj"].dtype == torch.float32  # normalised in fp32 for the loss
    cos = (bf["proj"] * ref["proj"]).sum(dim=1)
    assert cos.min() > 0.9, f"bf16 embeddings drifted from fp32 ones (min cosine {cos.min():.3f})"


def test_pretrained_state_dict_file_reloads_identical_weights(
    model: MultiHeadDeepLab, tmp_path: Path
) -> None:
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    again = MultiHeadDeepLab(CLASSES, backbone="resnet18", head_depth=2, proj_dim=32, pretrained=path)
    mine, theirs = model.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key


def test_pretrained_wrapped_checkpoint_and_torchvision_backbone(
    model: MultiHeadDeepLab, tmp_path: Path
) -> None:
    wrapped = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "step": 3}, wrapped)
    again = MultiHeadDeepLab(CLASSES, backbone="resnet18", head_depth=2, proj_dim=32, pretrained=wrapped)
    assert torch.equal(again.heads["custom"].classifier.weight, model.heads["custom"].classifier.weight)

    tv = torchvision.models.resnet18(weights=None)
    tv_path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), tv_path)
    m = MultiHeadDeepLab({"a": 3}, backbone="resnet18", output_stride=8, pretrained=tv_path)
    assert torch.equal(m.backbone.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    assert torch.equal(m.backbone.bn1.running_var, tv.bn1.running_var)


def test_bad_pretrained_files_raise_clear_errors(model: MultiHeadDeepLab, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        MultiHeadDeepLab({"a": 3}, backbone="resnet18", pretrained=garbage)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        MultiHeadDeepLab({"a": 3}, backbone="resnet18", pretrained=tmp_path / "missing.pt")
    saved = tmp_path / "model.pt"
    torch.save(model.state_dict(), saved)
    with pytest.raises(ValueError, match=r"shape mismatches.*heads\.custom\.classifier"):
        MultiHeadDeepLab({**CLASSES, "custom": 9}, backbone="resnet18", proj_dim=32, pretrained=saved)
    with pytest.raises(ValueError, match=r"unexpected keys.*heads\.bdd"):
        MultiHeadDeepLab({"cityscapes": 19, "custom": 7}, backbone="resnet18", proj_dim=32, pretrained=saved)
    with pytest.raises(ValueError, match="resnet34 backbone"):
        torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
        MultiHeadDeepLab({"a": 3}, backbone="resnet34", pretrained=tmp_path / "r18.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither"):
        MultiHeadDeepLab({"a": 3}, backbone="resnet18", pretrained=tmp_path / "other.pt")


def test_bad_inputs_name_the_problem(model: MultiHeadDeepLab) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(3, 32, 32\)"):
        model(torch.randn(3, 32, 32), "bdd")
    with pytest.raises(ValueError, match=r"60x64.*pad to 64x64.*crop to 56x64"):
        model(torch.randn(1, 3, 60, 64), "bdd")
    with pytest.raises(ValueError, match=r"'kitti'.*cityscapes"):
        model(torch.randn(1, 3, 32, 32), "kitti")
    with pytest.raises(ValueError, match=r"'kitti'"):
        model.forward_domains({"kitti": torch.randn(1, 3, 32, 32)})
    with pytest.raises(TypeError, match="normalize_uint8"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "bdd")
    with pytest.raises(ValueError, match="common size"):
        model.forward_domains({"bdd": torch.randn(1, 3, 32, 32), "custom": torch.randn(1, 3, 40, 32)})


def test_bad_construction_arguments() -> None:
    with pytest.raises(ValueError, match="backbone"):
        MultiHeadDeepLab({"a": 3}, backbone="vgg16")
    with pytest.raises(ValueError, match="output_stride"):
        MultiHeadDeepLab({"a": 3}, backbone="resnet18", output_stride=32)
    with pytest.raises(ValueError, match=r"num_classes\['a'\]"):
        MultiHeadDeepLab({"a": 0}, backbone="resnet18")
    with pytest.raises(ValueError, match="'train'"):
        MultiHeadDeepLab({"train": 3}, backbone="resnet18")
    with pytest.raises(ValueError, match="head_depth"):
        MultiHeadDeepLab({"a": 3}, backbone="resnet18", head_depth=0)


def test_train_mode_single_image_explains_aspp_batchnorm() -> None:
    m = MultiHeadDeepLab({"a": 3}, backbone="resnet18").train()
    with pytest.raises(ValueError, match="at least 2 images"):
        m(torch.randn(1, 3, 32, 32), "a")


def test_param_groups_cover_every_parameter_once(model: MultiHeadDeepLab) -> None:
    groups = param_groups(model, 0.01, 10.0)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.backbone.parameters()}
    assert groups[0]["lr"] == pytest.approx(0.01) and groups[1]["lr"] == pytest.approx(0.1)
    assert groups[1]["lr_mult"] == 10.0
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # accepted as is
    assert count_parameters(model) == sum(p.numel() for g in groups for p in g["params"])


def test_normalize_uint8_matches_torchvision_normalize() -> None:
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = torchvision.transforms.functional.normalize(x.float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(normalize_uint8(x), expected)
    with pytest.raises(TypeError, match="uint8"):
        normalize_uint8(x.float())
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        normalize_uint8(x.permute(0, 2, 3, 1))


def test_bench_model_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_model", ROOT / "benchmarks" / "bench_model.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    bench.main(["--size", "32", "--backbone", "resnet18", "--domains", "2", "--iters", "1", "--warmup", "0",
                "--peak-size", "256", "--peak-repeats", "2"])  # fmt: skip
    torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines if line.startswith("mode=")] == [
        "mode=fp32_nchw", "mode=fp32_cl", "mode=bf16_cl"]  # fmt: skip
    assert lines[-1].startswith("model: bf16_cl_vs_fp32=") and "fp32_frac_of_peak=" in lines[-1]
