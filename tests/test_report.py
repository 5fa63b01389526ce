"""The report table: averages never count LFW pairs twice, LFW-derived columns of an LFW-trained row are
marked as not held out, and an unresolvable FAR is said so rather than tabulated."""
from tasks.quality import quality, real_baseline
from tasks.report import accuracy_ratio, markdown, report_table


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


def test_size_matched_real_row_its_ratio_and_a_shortfall_mark():
    size = {"target": {"images": 48, "identities": 6}, "selected": {"images": 48, "identities": 6},
            "shortfall": {"images": 0, "identities": 0}, "matched": True}
    rows = {"real (LFW train split)": {"lfw_heldout": res(0.845)}, "real (LFW train split, size-matched)": {"lfw_heldout": res(0.70)},
            "synthetic (id3)": {"lfw_heldout": res(0.63)}}
    t = report_table(rows, {"real (LFW train split, size-matched)": {"images": 48, "identities": 6, "size_match": size}})
    assert list(t) == list(rows) and t["real (LFW train split, size-matched)"]["size_match"] == size
    r = accuracy_ratio(t, "synthetic (id3)", "real (LFW train split, size-matched)")
    assert abs(r["ratio"] - 0.9) < 1e-12 and r["benchmark"] == "lfw_heldout" and r["size_matched"] is True
    assert r["synthetic_accuracy"] == 0.63 and r["matched_real_accuracy"] == 0.70
    md = markdown(t, ["lfw_heldout"], {}, [0.001], r)
    assert "| real (LFW train split, size-matched) | 48 | 6 | 70.00 ± 1.00 |" in md and "‡" not in md
    assert "Synthetic / size-matched real accuracy on lfw_heldout: 0.900 (63.00 % / 70.00 %)." in md
    short = {**size, "selected": {"images": 40, "identities": 5}, "shortfall": {"images": 8, "identities": 1}, "matched": False}
    t = report_table(rows, {"real (LFW train split, size-matched)": {"images": 40, "identities": 5, "size_match": short}})
    r = accuracy_ratio(t, "synthetic (id3)", "real (LFW train split, size-matched)")
    md = markdown(t, ["lfw_heldout"], {}, [0.001], r)
    assert "| real (LFW train split, size-matched) ‡ | 40 | 5 |" in md and r["size_matched"] is False
    assert "it is 8 images and 1 identities short" in md and "smaller than the synthetic set (‡)" in md


def test_real_baseline_paragraph_and_quality_tables_beside_scalar_keys():
    import numpy as np
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    ident = np.repeat(np.arange(4), 4)
    tight, loose = (unit(np.eye(8)[ident] + s * rng.standard_normal((16, 8))) for s in (0.1, 0.6))
    qs = {k: quality(e, ident, 0.5, 0.3) for k, e in (("syn", tight), ("low", loose), ("full", tight))}
    base = real_baseline({"quality": qs["syn"], "resolution": 32, "faces_found": 0.02},
                         {"quality": qs["low"], "resolution": 32, "faces_found": 0.4},
                         {"quality": qs["full"], "resolution": 112, "faces_found": 1.0})
    quality_sets = {"synthetic": {"judge (dlib)": qs["syn"], "faces_found": 0.02, "faces_found_resolution": 32},
                    "real": {"judge (dlib)": qs["full"], "judge (dlib) at synthetic resolution": qs["low"], "faces_found": 0.4}}
    t = report_table({"real": {"lfw_heldout": res(0.8)}}, {})
    md = markdown(t, ["lfw_heldout"], quality_sets, [0.001], None, base)
    assert "| metric | judge (dlib) | judge (dlib) at synthetic resolution |" in md  # scalar keys are no columns
    assert "| real, at the synthetic resolution | 32 |" in md and "| real, full resolution | 112 |" in md
    assert "| 2.00 % |" in md and "| 40.00 % |" in md and "| 100.00 % |" in md  # faces found
    assert "Synthetic / real (32 px) - the like-for-like baseline: different-identity acceptance" in md
    assert "(target <= 2)" in md and "(target >= 0.8)" in md and "Synthetic / real (112 px):" in md
