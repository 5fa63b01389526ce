"""The files a stage folder holds beside its outputs (timing log, locks, temporary files) are left out of
both hashes: the project's input digests (tasks/io.not_output) and DVC's (.dvcignore, asked through
`dvc check-ignore`), and real outputs are in both."""
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from tasks.io import NOT_OUTPUT, not_output

DVC = str(Path(sys.executable).parent / "dvc")


def test_dvcignore_and_not_output_agree():
    leftovers = ["timing.json", ".block-000001.tar.lock", ".block-000001.tar.123.ab12cd.tmp", ".run.json.9.x.tmp"]
    outputs = ["run.json", "block-000001.tar", "manifest.parquet", "x.lock", "y.tmp"]
    assert len(NOT_OUTPUT) == 3 and all(not_output(n) for n in leftovers) and not any(not_output(n) for n in outputs)
    paths = [f"artifacts/sample/{n}" for n in leftovers + outputs]
    r = subprocess.run([DVC, "check-ignore", "--non-matching", "--details", *paths], cwd=ROOT, capture_output=True, text=True)
    ignored = {line.split("\t")[-1] for line in r.stdout.splitlines() if not line.startswith("::")}
    assert ignored == {f"artifacts/sample/{n}" for n in leftovers}, r.stdout + r.stderr
