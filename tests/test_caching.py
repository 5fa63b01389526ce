"""Prefect task caching keys on content: same bytes hit, changed bytes under the same path miss."""
from pathlib import Path


def test_cache_follows_file_bytes(tmp_path, prefect_harness):
    from prefect import flow, task

    from flows.caching import content_key

    calls = []

    @task(cache_key_fn=content_key, persist_result=True)
    def count_lines(path: Path, scale: int) -> int:
        calls.append(1)
        return len(path.read_text().splitlines()) * scale

    @flow
    def run(path: Path, scale: int):
        return count_lines(path, scale, return_state=True)

    f = tmp_path / "input.txt"
    f.write_text("a\nb\n")
    s1 = run(f, 2)
    assert s1.result() == 4 and len(calls) == 1
    s2 = run(f, 2)  # unchanged bytes: a cache hit, the task body does not run
    assert s2.is_completed() and s2.name == "Cached" and s2.result() == 4 and len(calls) == 1
    f.write_text("a\nb\nc\n")  # same path, new bytes: recomputed
    s3 = run(f, 2)
    assert s3.result() == 6 and len(calls) == 2 and s3.name != "Cached"
    moved = tmp_path / "elsewhere.txt"  # another path with the same bytes: still a hit
    moved.write_bytes(f.read_bytes())
    assert run(moved, 2).name == "Cached" and len(calls) == 2
    assert run(f, 3).result() == 9 and len(calls) == 3  # a parameter change misses too


def _tree(root: Path, files: dict[str, str]):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


LAZY_INIT = '''_LAZY = {"Pipe": "m"}
def __getattr__(name):
    import importlib
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
'''


def test_a_tasks_code_version_covers_what_its_module_can_run_and_nothing_else(tmp_path):
    """The key's code is the module's import closure: function-level and relative imports, package __init__s,
    modules named in strings, a package's lazy attributes only for who takes names from it; code the module
    cannot run does not change its version, code it can run does."""
    from flows.caching import code_version, module_files
    _tree(tmp_path, {
        "flows/__init__.py": "ROOT = 1\n", "flows/a.py": "from tasks.x import f\nfrom . import ROOT\n",
        "flows/b.py": "from models import Pipe\n", "flows/c.py": "from models.m import Pipe\nCMD = ['-m', 'tasks.y']\n",
        "tasks/__init__.py": "", "tasks/x.py": "def f():\n    from .z import g\n    return g\n", "tasks/y.py": "",
        "tasks/z.py": "def g(): pass\n", "tasks/unused.py": "", "models/__init__.py": LAZY_INIT,
        "models/m.py": "class Pipe: pass\n", "models/n.py": "",
    })

    def rel(module):
        return {str(f.relative_to(tmp_path)) for f in module_files(module, tmp_path)}

    assert rel("flows.a") == {"flows/__init__.py", "flows/a.py", "tasks/__init__.py", "tasks/x.py", "tasks/z.py"}
    assert rel("flows.b") == {"flows/__init__.py", "flows/b.py", "models/__init__.py", "models/m.py", "models/n.py"}
    assert rel("flows.c") == {"flows/__init__.py", "flows/c.py", "models/__init__.py", "models/m.py", "tasks/__init__.py",
                              "tasks/y.py"}
    before = code_version("flows.a", tmp_path)
    (tmp_path / "tasks/unused.py").write_text("X = 2\n")
    (tmp_path / "models/n.py").write_text("X = 2\n")
    code_version.cache_clear()
    assert code_version("flows.a", tmp_path) == before  # another stage's code: the cache stays valid
    (tmp_path / "tasks/z.py").write_text("def g(): return 1\n")
    code_version.cache_clear()
    assert code_version("flows.a", tmp_path) != before
    assert code_version(None, tmp_path) == code_version("__main__", tmp_path)  # outside the project: all the code
    code_version.cache_clear()


def test_every_stage_lists_exactly_its_flows_code_as_dvc_deps():
    """dvc reruns a stage when a dep changes: its .py deps are the import closure of the flow it runs (plus the
    CLI), so no change to code it runs goes unnoticed and no change to code it cannot run reruns it."""
    import yaml

    from flows import ROOT
    from flows.__main__ import STAGES
    from flows.caching import module_files
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, st in stages.items():
        cli = st["cmd"].split()
        assert cli[:3] == ["python", "-m", "flows"], (name, st["cmd"])
        need = {str(f.relative_to(ROOT)) for f in module_files(STAGES[cli[3]][0])} | {"flows/__main__.py"}
        deps = {d for d in st["deps"] if d.endswith(".py")}
        assert deps == need, f"{name}: missing {sorted(need - deps)}, not run {sorted(deps - need)}"


def test_align_sees_its_weight_files_in_the_cache_key_and_dvc_deps(tmp_path):
    """A weight file dropped into align.weights_dir changes align's output (HopeNet replaces PnP head pose), so
    its bytes are in the chunk task's cache key and the folder is a DVC dep of align."""
    from types import SimpleNamespace

    import yaml

    from flows import ROOT
    from flows.align import align_chunk, used_weights
    from flows.caching import content_key
    from tasks.align import RETINAFACE_WEIGHTS
    from tasks.attributes import HOPENET_FILE
    align = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["align"]
    default = yaml.safe_load((ROOT / "params.yaml").read_text())["align"]["weights_dir"]
    assert default in align["deps"] and (ROOT / default / "README.md").is_file()  # the folder exists on a fresh clone

    p = {"detector": "mtcnn", "pose": "auto", "weights_dir": str(tmp_path)}
    ctx = SimpleNamespace(task=align_chunk)
    key = lambda q: content_key(ctx, {"kind": "lfw", "members": [], "p": q, "weights": used_weights(q)})  # noqa: E731
    before = key(p)
    (tmp_path / HOPENET_FILE).write_bytes(b"one")
    (tmp_path / RETINAFACE_WEIGHTS).write_bytes(b"two")
    assert used_weights(p) == {HOPENET_FILE: tmp_path / HOPENET_FILE}  # MTCNN does not read RetinaFace's file
    with_file = key(p)
    assert with_file != before
    (tmp_path / HOPENET_FILE).write_bytes(b"three")  # replaced under the same name: a miss too
    assert key(p) not in (before, with_file)
    assert used_weights(dict(p, pose="pnp")) == {}
    assert set(used_weights(dict(p, detector="retinaface"))) == {RETINAFACE_WEIGHTS, HOPENET_FILE}
