"""params.yaml validation: the shipped files load; bad values are rejected with the key named."""
import copy

import pytest
import yaml

from tasks.params import ParamsError, load_params, validate

from conftest import ROOT


def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_files_validate():
    for name in ("params.yaml", "params-paper.yaml"):
        load_params(ROOT / name)


@pytest.mark.parametrize("path,value,message", [
    (("sample", "num_identities"), "many", "sample.num_identities: expected int"),
    (("sample", "v_low"), 2.0, "sample.v_low: 2.0 is above the maximum"),
    (("generator", "method"), "gan", "generator.method: 'gan' is not one of"),
    (("align", "eval_folds"), [8], "align.eval_folds: must not share a fold"),
    (("encoder", "arch", "layers"), [1, "x"], "encoder.arch.layers[1]: expected int"),
    (("package", "uniqueness"), False, "package.uniqueness: expected str, got bool False .YAML reads unquoted on/off"),
    (("encoder", "distributed", "nnodes"), 2, "encoder.distributed.rdzv_endpoint: needed when nnodes > 1"),
    (("train_fr", "distributed", "nproc_per_node"), 3, "train_fr.batch_size: 64 does not divide over 3 processes"),
    # NaN passes every range comparison: the package filters' numbers are checked finite
    (("package", "privacy_fmr"), float("nan"), "package.privacy_fmr: nan is not a finite number"),
    (("package", "privacy_threshold", "judge"), float("nan"), "package.privacy_threshold.judge: nan is not a finite number"),
    (("package", "unique_radius"), float("nan"), "package.unique_radius: nan is not a finite number"),
    (("package", "privacy_fmr"), float("inf"), "package.privacy_fmr: inf is not a finite number"),
    (("package", "privacy_fmr"), 0, "package.privacy_fmr: 0.0 is a false-match rate, strictly between 0 and 1"),
    (("package", "privacy_fmr"), 1.0, "package.privacy_fmr: 1.0 is a false-match rate, strictly between 0 and 1"),
])
def test_bad_values_name_the_key(path, value, message):
    r = copy.deepcopy(raw())
    d = r
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(r)


def test_unknown_and_missing_keys():
    r = raw()
    r["sample"]["num_identitis"] = 3
    with pytest.raises(ParamsError, match="sample.num_identitis: unknown key"):
        validate(r)
    r = raw()
    del r["package"]["shard_size"]
    with pytest.raises(ParamsError, match="package.shard_size: missing key"):
        validate(r)


def test_cli_reports_bad_params_in_one_line(tmp_path, capsys):
    from flows.__main__ import main
    r = raw()
    r["evaluate"]["folds"] = 1
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(r))
    assert main(["params", "--params", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "evaluate.folds" in err


def test_cli_names_a_corrupt_data_file(tmp_path, capsys, monkeypatch):
    from flows.__main__ import main
    r = raw()
    r["data"]["dir"] = str(tmp_path)  # absolute: ROOT / abs = abs
    for name in r["data"]["sha256"]:
        (tmp_path / name).write_bytes(b"not the real file")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(r))
    assert main(["align", "--params", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not match the expected" in err and str(tmp_path) in err
