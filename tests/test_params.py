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
    (("generator", "unet", "attention"), [True], "generator.unet.attention: one true/false per level of generator.unet.block_out_channels .3., got 1"),
    # paths stay inside the project: params alone never point a stage elsewhere
    (("data", "dir"), "/srv/lfw", "data.dir: '/srv/lfw' is not a path inside the project"),
    (("data", "dir"), "data/../../lfw", "data.dir: 'data/../../lfw' is not a path inside the project"),
    (("align", "weights_dir"), "../weights", "align.weights_dir: '../weights' is not a path inside the project"),
    (("align", "train_source"), "imagefolder:/etc", "align.train_source: '/etc' is not a path inside the project"),
    (("align", "train_source"), "recordio:../x/train", "align.train_source: '../x/train' is not a path inside the project"),
    (("encoder", "pretrained"), "/tmp/arcface.pth", "encoder.pretrained: '/tmp/arcface.pth' is not a path inside"),
    (("generator", "idbooth", "base_model"), "C:\\sd21", "generator.idbooth.base_model: 'C:.*' is not a path inside"),
    (("evaluate", "benchmarks_dir"), "", "evaluate.benchmarks_dir: '' is not a path inside the project"),
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
    import flows
    from flows.__main__ import main
    monkeypatch.setattr(flows, "ROOT", tmp_path)  # a project whose data.dir holds the wrong bytes
    r = raw()
    r["data"]["dir"] = "data"
    (tmp_path / "data").mkdir()
    for name in r["data"]["sha256"]:
        (tmp_path / "data" / name).write_bytes(b"not the real file")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(r))
    assert main(["align", "--params", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not match the expected" in err and str(tmp_path) in err


def test_params_yaml_is_read_strictly(tmp_path, capsys):
    """A key given twice, aliases (a billion-laughs file) and oversized or non-UTF-8 files are refused before
    anything is built from them, in one line naming the file and, where there is one, the line."""
    from flows.__main__ import main
    from tasks import params as P
    text = (ROOT / "params.yaml").read_text()
    dup = tmp_path / "dup.yaml"
    dup.write_text(text.replace("\nsample:\n", "\nsample:\n  seed: 1\n", 1))  # sample.seed again further down
    line = dup.read_text().splitlines().index("sample:") + 1
    with pytest.raises(ParamsError) as e:
        load_params(dup)
    msg = str(e.value)
    assert msg.startswith(f"{dup}:") and "key 'seed' is given twice" in msg and "\n" not in msg
    assert int(msg.split(":")[1]) > line  # the second occurrence's line
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")))
    with pytest.raises(ParamsError, match=r"laughs.yaml:2:\d+: not valid params YAML \(alias \*a: aliases are not allowed"):
        load_params(laughs)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * P.MAX_BYTES + "\n" + text)
    with pytest.raises(ParamsError, match="more than a params file's"):
        load_params(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"sample:\n  seed: \xff\xfe\n")
    with pytest.raises(ParamsError, match="bin.yaml: not UTF-8 text"):
        load_params(binary)
    assert main(["params", "--params", str(laughs)]) == 2  # the CLI: exit 2, one line
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "aliases are not allowed" in err


@pytest.mark.parametrize("sha256,message", [
    ({"../../x": "0" * 64}, r"data.sha256.../../x: a file name inside data.dir"),
    ({"sub/pairs.txt": "0" * 64}, r"data.sha256.sub/pairs.txt: a file name inside data.dir"),
    ({"pairs.txt": "abc"}, r"data.sha256.pairs.txt: 'abc' is not a SHA-256"),
    ({}, r"data.sha256: no checksum for lfw-deepfunneled.zip, pairs.txt, people.txt"),
])
def test_data_checksums_name_plain_files_and_cover_every_input(sha256, message):
    r = raw()
    r["data"]["sha256"] = sha256
    with pytest.raises(ParamsError, match=message):
        validate(r)
