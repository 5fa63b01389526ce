"""The report table: averages never count LFW pairs twice, LFW-derived columns of an LFW-trained row are
marked as not held out, and an unresolvable FAR is said so rather than tabulated."""
from tasks.report import markdown, report_table


def res(acc, resolved=False):
    return {"accuracy": acc, "accuracy_std": 0.01, "tar_at_far_0.001": 0.5, "tar_at_far_0.001_resolved": resolved,
            "tar_at_far_0.0001": 0.4, "tar_at_far_0.0001_resolved": False}


def test_average_and_not_held_out_marks():
    only = report_table({"real": {"lfw_heldout": res(0.8)}}, {})
    assert only["real"]["average_accuracy"] == 0.8 and only["real"]["average_over"] == ["lfw_heldout"]
    five = {b: res(a) for b, a in zip(["lfw_heldout", "lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"],
                                      [0.5, 0.9, 0.8, 0.7, 0.6, 0.5])}
    t = report_table({"real": five, "synthetic": five}, {"real": {"not_held_out": ["lfw", "calfw", "cplfw"]}})
    assert abs(t["real"]["average_accuracy"] - 0.7) < 1e-12 and "lfw_heldout" not in t["real"]["average_over"]
    assert abs(t["real"]["average_accuracy_standard5"] - 0.7) < 1e-12
    md = markdown(t, list(five), {}, [0.001, 0.0001])
    real_row = next(line for line in md.splitlines() if line.startswith("| real |"))
    assert real_row.count("†") == 3 and "| synthetic |" in md and "†" not in md.split("| synthetic |")[1].split("\n")[0]
    assert "TAR at FAR = 0.0001: no benchmark" in md and "TAR (%) at FAR = 0.001" not in md  # neither resolves
    t["real"]["benchmarks"]["lfw"]["tar_at_far_0.001_resolved"] = True
    assert "TAR (%) at FAR = 0.001" in markdown(t, list(five), {}, [0.001])
