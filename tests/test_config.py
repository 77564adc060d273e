"""Config: presets validate, overrides apply, bad keys and values are errors naming the key path."""

import pytest

from raymh.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    flatten,
    load_config,
    load_config_dict,
    preset_names,
    to_yaml,
)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates(name):
    cfg = load_config(name)
    assert cfg.domains and cfg.name == name


def test_shipped_presets_are_there():
    assert {"quickstart", "paper", "supervised", "full_labels", "single_domain"} <= set(preset_names())


def test_baselines_are_overrides_of_paper():
    paper, sup, full = load_config("paper"), load_config("supervised"), load_config("full_labels")
    assert sup.loss.dc_weight == 0 and paper.loss.dc_weight == 0.1
    assert full.data.labeled_fraction == 1.0 and full.model == paper.model
    assert len(load_config("single_domain").domains) == 1


def test_dotted_overrides_apply_and_parse_yaml_values():
    cfg = load_config("quickstart", ["loss.dc_weight=0.2", "data.crop_size=[64, 96]", "domains.1.labeled_fraction=0.25"])
    assert cfg.loss.dc_weight == 0.2
    assert cfg.data.crop_size == (64, 96)
    assert cfg.labeled_fraction(cfg.domains[1]) == 0.25
    assert cfg.labeled_fraction(cfg.domains[0]) == cfg.data.labeled_fraction


@pytest.mark.parametrize(
    "override, key",
    [
        ("loss.dcweight=0.2", "loss.dcweight"),
        ("loss.gamma=1.5", "loss.gamma"),
        ("model.backbone=vgg16", "model.backbone"),
        ("model.head_depth=two", "model.head_depth"),
        ("data.crop_size=[100,128]", "data.crop_size"),
        ("domains.0.kind=[1]", "domains[0].kind"),
        ("trian.iters=3", "trian"),
    ],
)
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config("quickstart", [override])
    assert key in str(e.value)


def test_malformed_override_and_list_index():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config("quickstart", ["loss.dc_weight"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config("quickstart", ["domains.7.kind=folder"])


def test_unknown_preset_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="quickstart"):
        load_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_yaml_round_trip_and_extends(tmp_path):
    cfg = load_config("quickstart", ["loss.gamma=0.8"])
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(str(path)) == cfg
    child = tmp_path / "child.yaml"
    child.write_text("extends: quickstart\nloss: {dc_weight: 0.0}\n")
    merged = load_config(str(child))
    assert merged.loss.dc_weight == 0.0 and merged.loss.gamma == load_config("quickstart").loss.gamma


def test_domain_rules():
    raw = load_config_dict("quickstart")
    dup = apply_overrides(raw, {"domains": [{"name": "a", "kind": "folder", "root": "x"}] * 2})
    with pytest.raises(ConfigError, match="unique"):
        config_from_dict(dup)
    with pytest.raises(ConfigError, match="root"):
        config_from_dict(apply_overrides(raw, {"domains": [{"name": "a", "kind": "folder"}]}))
    with pytest.raises(ConfigError, match="letters"):
        config_from_dict(apply_overrides(raw, {"domains": [{"name": "a b", "kind": "folder", "root": "x"}]}))


def test_flatten_gives_dotted_params():
    flat = flatten(load_config("quickstart"))
    assert flat["loss.dc_weight"] == 0.1
    assert flat["domains.0.name"] == "cityscapes"
    assert flat["data.crop_size"] == [128, 128]
