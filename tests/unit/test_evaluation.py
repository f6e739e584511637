"""predraft.models.evaluation: metrics checked against hand arithmetic, bootstrap intervals, edge cases, plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from predraft.models.evaluation import evaluate_predictions, plot_confusion_matrix, plot_roc_curves, write_report
from predraft.models.taxonomy import CLASS_ORDER

CLASSES = ["a", "b", "c"]

# Twelve rows, three classes; the comment gives each row's predicted class (the argmax).
TABLE = [
    (0, [0.7, 0.2, 0.1]),  # a  right
    (0, [0.6, 0.3, 0.1]),  # a  right
    (0, [0.5, 0.1, 0.4]),  # a  right
    (0, [0.3, 0.6, 0.1]),  # b  wrong
    (1, [0.2, 0.7, 0.1]),  # b  right
    (1, [0.1, 0.8, 0.1]),  # b  right
    (1, [0.5, 0.4, 0.1]),  # a  wrong
    (1, [0.1, 0.5, 0.4]),  # b  right
    (2, [0.1, 0.1, 0.8]),  # c  right
    (2, [0.2, 0.2, 0.6]),  # c  right
    (2, [0.3, 0.3, 0.4]),  # c  right
    (2, [0.1, 0.5, 0.4]),  # b  wrong (the same scores as row 8: ties in every column)
]
LABELS = np.array([label for label, _ in TABLE])
PROBS = np.array([probs for _, probs in TABLE])


def _values(metric: dict) -> float | None:
    return metric["value"]


def test_metrics_match_hand_arithmetic():
    report = evaluate_predictions(LABELS, PROBS, CLASSES, n_bootstrap=0)

    # Confusion matrix, rows true, columns predicted:
    #   a: 3 1 0 | b: 1 3 0 | c: 0 1 3      row totals 4 4 4, column totals 4 5 3
    assert report["confusion_matrix"] == [[3, 1, 0], [1, 3, 0], [0, 1, 3]]
    assert report["n"] == 12 and report["classes"] == CLASSES

    # p_o = (3 + 3 + 3) / 12 = 0.75
    assert _values(report["accuracy"]) == pytest.approx(0.75)
    # p_e = (4*4 + 4*5 + 4*3) / 12**2 = 48 / 144 = 1/3
    # kappa = (p_o - p_e) / (1 - p_e) = (3/4 - 1/3) / (2/3) = (5/12) / (8/12) = 5/8
    assert _values(report["cohen_kappa"]) == pytest.approx(5 / 8)

    per_class = report["per_class"]
    # precision = TP / column total: a 3/4, b 3/5, c 3/3
    # recall    = TP / row total:    a 3/4, b 3/4, c 3/4
    # F1 = 2TP / (2TP + FP + FN):    a 6/(6+1+1) = 3/4, b 6/(6+2+1) = 2/3, c 6/(6+0+1) = 6/7
    expected = {"a": (3 / 4, 3 / 4, 3 / 4), "b": (3 / 5, 3 / 4, 2 / 3), "c": (1.0, 3 / 4, 6 / 7)}
    for name, (precision, recall, f1) in expected.items():
        assert per_class[name]["support"] == 4
        assert _values(per_class[name]["precision"]) == pytest.approx(precision)
        assert _values(per_class[name]["recall"]) == pytest.approx(recall)
        assert _values(per_class[name]["f1"]) == pytest.approx(f1)

    # AUC = (sum over positives of #negatives scored lower + 1/2 #negatives tied) / (4 positives * 8 negatives)
    # a: positives 0.7 0.6 0.5 0.3; negatives 0.2 0.1 0.5 0.1 0.1 0.2 0.3 0.1
    #    0.7 -> 8, 0.6 -> 8, 0.5 -> 7 + 1/2 (tie with 0.5), 0.3 -> 6 + 1/2 (tie with 0.3): 30 / 32
    # b: positives 0.7 0.8 0.4 0.5; negatives 0.2 0.3 0.1 0.6 0.1 0.2 0.3 0.5
    #    0.7 -> 8, 0.8 -> 8, 0.4 -> 6, 0.5 -> 6 + 1/2 (tie with 0.5): 28.5 / 32
    # c: positives 0.8 0.6 0.4 0.4; negatives 0.1 0.1 0.4 0.1 0.1 0.1 0.1 0.4
    #    0.8 -> 8, 0.6 -> 8, each 0.4 -> 6 + 2/2 (ties with two 0.4s): 30 / 32
    auc = {"a": 30 / 32, "b": 28.5 / 32, "c": 30 / 32}
    for name, value in auc.items():
        assert _values(per_class[name]["auc"]) == pytest.approx(value)

    macro = report["macro"]
    assert _values(macro["precision"]) == pytest.approx((3 / 4 + 3 / 5 + 1.0) / 3)
    assert _values(macro["recall"]) == pytest.approx(3 / 4)
    assert _values(macro["f1"]) == pytest.approx((3 / 4 + 2 / 3 + 6 / 7) / 3)
    assert _values(macro["auc"]) == pytest.approx((30 + 28.5 + 30) / 96)
    assert report["macro_classes"]["auc"] == CLASSES


def test_metrics_agree_with_scikit_learn():
    from sklearn.metrics import cohen_kappa_score, precision_recall_fscore_support, roc_auc_score

    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, size=200)
    report = evaluate_predictions(labels, probs, ["w", "x", "y", "z"], n_bootstrap=0)
    predicted = probs.argmax(axis=1)
    assert _values(report["cohen_kappa"]) == pytest.approx(cohen_kappa_score(labels, predicted))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=range(4))
    for k, name in enumerate("wxyz"):
        entry = report["per_class"][name]
        assert entry["support"] == support[k]
        assert _values(entry["precision"]) == pytest.approx(precision[k])
        assert _values(entry["recall"]) == pytest.approx(recall[k])
        assert _values(entry["f1"]) == pytest.approx(f1[k])
        assert _values(entry["auc"]) == pytest.approx(roc_auc_score(labels == k, probs[:, k]))
        # the trapezoid under the stored ROC points is the same area
        points = report["roc"][name]
        assert np.trapezoid(points["tpr"], points["fpr"]) == pytest.approx(_values(entry["auc"]))
    assert _values(report["macro"]["auc"]) == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))


def test_intervals_contain_the_estimate_and_repeat_for_a_seed():
    first = evaluate_predictions(LABELS, PROBS, CLASSES, n_bootstrap=300, seed=7)
    again = evaluate_predictions(LABELS, PROBS, CLASSES, n_bootstrap=300, seed=7)
    other = evaluate_predictions(LABELS, PROBS, CLASSES, n_bootstrap=300, seed=8)
    assert first == again
    assert first["accuracy"] != other["accuracy"]
    assert first["bootstrap"] == {"n_bootstrap": 300, "confidence": 0.95, "seed": 7, "unit": "row"}

    metrics = [first["accuracy"], first["cohen_kappa"], *first["macro"].values()]
    metrics += [first["per_class"][name][metric] for name in CLASSES for metric in ("precision", "recall", "f1")]
    for metric in metrics:
        assert metric["ci_low"] <= metric["value"] <= metric["ci_high"]
        assert 0 < metric["n_resamples"] <= 300
    for metric in (first["accuracy"], first["cohen_kappa"], *first["macro"].values()):
        assert metric["ci_low"] < metric["ci_high"]
    # Every prediction of c is right, so c's precision is 1 in every resample that predicts c at all.
    assert first["per_class"]["c"]["precision"]["ci_low"] == 1.0
    assert first["accuracy"]["n_resamples"] == 300  # accuracy is defined in every resample

    narrow = evaluate_predictions(LABELS, PROBS, CLASSES, n_bootstrap=300, seed=7, confidence=0.5)
    assert first["accuracy"]["ci_low"] <= narrow["accuracy"]["ci_low"]
    assert narrow["accuracy"]["ci_high"] <= first["accuracy"]["ci_high"]
    assert (
        narrow["accuracy"]["ci_high"] - narrow["accuracy"]["ci_low"]
        < first["accuracy"]["ci_high"] - first["accuracy"]["ci_low"]
    )


def test_resamples_where_a_metric_is_undefined_are_skipped_and_counted():
    # One row of class c among 11 others: about a third of resamples ((1 - 1/12)**12 = 0.35) lack it, so its
    # recall and AUC (and the macro averages over a, b, c) are undefined there and skipped: ~130 of 200 remain.
    labels = np.array([0] * 6 + [1] * 5 + [2])
    probs = np.tile([0.8, 0.1, 0.1], (12, 1))
    probs[6:11] = [0.1, 0.8, 0.1]
    probs[11] = [0.1, 0.1, 0.8]
    report = evaluate_predictions(labels, probs, CLASSES, n_bootstrap=200, seed=1)
    recall_c = report["per_class"]["c"]["recall"]
    assert 100 < recall_c["n_resamples"] < 160
    assert report["per_class"]["c"]["auc"]["n_resamples"] == recall_c["n_resamples"]
    assert report["macro"]["recall"]["n_resamples"] == recall_c["n_resamples"]
    assert report["accuracy"]["n_resamples"] == 200
    assert recall_c["value"] == 1.0 and recall_c["ci_low"] == recall_c["ci_high"] == 1.0


def test_cluster_bootstrap_resamples_groups_not_rows():
    # Every row repeated five times: five images of one patient carry one patient's information. Resampling
    # rows treats 60 rows as independent and gives too narrow an interval; resampling patients does not.
    copies = 5
    labels = np.tile(LABELS, copies)
    probs = np.tile(PROBS, (copies, 1))
    patients = np.tile([f"patient-{i}" for i in range(12)], copies)

    by_row = evaluate_predictions(labels, probs, CLASSES, n_bootstrap=400, seed=3)
    by_patient = evaluate_predictions(labels, probs, CLASSES, groups=patients, n_bootstrap=400, seed=3)
    original = evaluate_predictions(LABELS, PROBS, CLASSES, n_bootstrap=400, seed=3)

    assert by_patient["bootstrap"]["unit"] == "group" and by_patient["n_groups"] == 12
    assert by_row["n_groups"] is None
    assert _values(by_patient["accuracy"]) == _values(by_row["accuracy"]) == pytest.approx(0.75)
    for key in ("accuracy", "cohen_kappa"):
        row_width = by_row[key]["ci_high"] - by_row[key]["ci_low"]
        patient_width = by_patient[key]["ci_high"] - by_patient[key]["ci_low"]
        assert patient_width > 1.5 * row_width
        # Drawing 12 patients weighs each copy alike: the same intervals as the 12 distinct rows.
        assert by_patient[key]["ci_low"] == pytest.approx(original[key]["ci_low"])
        assert by_patient[key]["ci_high"] == pytest.approx(original[key]["ci_high"])


def test_a_class_absent_from_the_labels_has_null_auc_recall_and_curve():
    probs = np.hstack([PROBS, np.zeros((12, 1))])
    report = evaluate_predictions(LABELS, probs, [*CLASSES, "d"], n_bootstrap=50)
    absent = report["per_class"]["d"]
    assert absent["support"] == 0
    assert absent["auc"]["value"] is None and absent["auc"]["ci_low"] is None
    assert absent["auc"]["reason"] == "class absent from the labels"
    assert absent["recall"]["value"] is None
    # never predicted either: precision and F1 have nothing to measure
    assert absent["precision"]["value"] is None and absent["f1"]["value"] is None
    assert report["roc"]["d"] is None
    # the macro averages leave d out and equal the three-class ones
    assert report["macro_classes"]["auc"] == CLASSES
    assert _values(report["macro"]["auc"]) == pytest.approx((30 + 28.5 + 30) / 96)
    assert _values(report["macro"]["precision"]) == pytest.approx((3 / 4 + 3 / 5 + 1.0) / 3)


def test_zero_division_rules_for_precision():
    # Class b is present but never predicted: precision 0.0 (its recall and F1 are 0 too).
    # Class c is absent from the labels but predicted once: precision 0.0, F1 0.0, recall null.
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.1, 0.7], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    report = evaluate_predictions(labels, probs, CLASSES, n_bootstrap=0)
    b, c = report["per_class"]["b"], report["per_class"]["c"]
    assert b["precision"]["value"] == 0.0 and b["recall"]["value"] == 0.0 and b["f1"]["value"] == 0.0
    assert c["precision"]["value"] == 0.0 and c["f1"]["value"] == 0.0
    assert c["recall"]["value"] is None and c["recall"]["reason"] == "class absent from the labels"
    assert report["macro_classes"]["precision"] == ["a", "b", "c"]
    assert report["macro_classes"]["recall"] == ["a", "b"]
    assert report["accuracy"]["ci_low"] is None and report["accuracy"]["n_resamples"] == 0


def test_perfect_predictions_give_one_with_a_degenerate_interval():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    probs = np.eye(3)[labels] * 0.9 + 0.1 / 3
    report = evaluate_predictions(labels, probs, CLASSES, n_bootstrap=200, seed=0)
    for key in ("accuracy", "cohen_kappa"):
        assert report[key]["value"] == pytest.approx(1.0)
        assert report[key]["ci_low"] == pytest.approx(1.0) and report[key]["ci_high"] == pytest.approx(1.0)
    assert report["accuracy"]["n_resamples"] == 200
    for name in CLASSES:
        assert report["per_class"][name]["auc"]["value"] == 1.0
    assert report["confusion_matrix"] == [[3, 0, 0], [0, 3, 0], [0, 0, 2]]


def test_fewer_than_two_classes_in_the_labels_gives_null_kappa_and_auc():
    labels = np.zeros(5, dtype=int)
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.7, 0.3]])
    report = evaluate_predictions(labels, probs, ["x", "y"], n_bootstrap=20)
    assert report["accuracy"]["value"] == pytest.approx(0.8)
    assert report["cohen_kappa"]["value"] is None
    assert report["cohen_kappa"]["reason"] == "fewer than two classes present in the labels"
    assert report["cohen_kappa"]["n_resamples"] == 0
    assert report["per_class"]["x"]["auc"]["value"] is None
    assert report["per_class"]["x"]["auc"]["reason"] == "the only class present in the labels: no negatives"
    assert report["per_class"]["y"]["auc"]["value"] is None
    assert report["macro"]["auc"]["value"] is None and report["macro_classes"]["auc"] == []
    assert report["roc"] == {"x": None, "y": None}


def test_hardware_classes_are_accepted_as_names():
    probs = np.full((9, 9), 0.02)
    np.fill_diagonal(probs, 0.84)
    report = evaluate_predictions(np.arange(9), probs, CLASS_ORDER, n_bootstrap=0)
    assert report["classes"][1] == "tha" and type(report["classes"][1]) is str
    json.loads(json.dumps(report, allow_nan=False))


@pytest.mark.parametrize(
    ("labels", "probs", "classes", "match"),
    [
        (LABELS[:11], PROBS, CLASSES, r"labels of shape \(11,\) do not match probabilities with 12 rows"),
        (LABELS, PROBS, ["a", "b"], "probabilities have 3 columns but 2 classes are named"),
        (LABELS, PROBS[:, :2] / 1.0, CLASSES, "probabilities have 2 columns"),
        (LABELS, PROBS * 0.9, CLASSES, r"rows must sum to 1 .* first row 0 sums to 0\.9"),
        (np.where(LABELS == 2, 3, LABELS), PROBS, CLASSES, r"labels must lie in \[0, 2\], got 0\.\.3"),
        (LABELS - 1, PROBS, CLASSES, r"labels must lie in \[0, 2\], got -1\.\.1"),
        (LABELS, np.where(np.arange(12)[:, None] == 4, np.nan, PROBS), CLASSES, "NaN .* first in row 4"),
        (np.where(LABELS == 1, np.nan, LABELS), PROBS, CLASSES, "labels hold 4 NaN"),
        (LABELS + 0.5, PROBS, CLASSES, "labels must be whole class indices"),
        (LABELS, PROBS[0], CLASSES, r"2-D array .* got shape \(3,\)"),
        (LABELS, np.hstack([PROBS[:, :2], PROBS[:, 2:] - 1.5]) + 0.5, CLASSES, r"must lie in \[0, 1\]"),
        (LABELS, PROBS, ["a", "b", "a"], r"unique, \['a'\] repeated"),
    ],
)
def test_invalid_inputs_raise_value_errors_naming_the_problem(labels, probs, classes, match):
    with pytest.raises(ValueError, match=match):
        evaluate_predictions(labels, probs, classes, n_bootstrap=0)


def test_invalid_options_raise():
    with pytest.raises(ValueError, match=r"groups of shape \(3,\) do not match probabilities with 12 rows"):
        evaluate_predictions(LABELS, PROBS, CLASSES, groups=["p1", "p2", "p3"])
    with pytest.raises(ValueError, match="groups must not hold missing ids: row 2 is None"):
        evaluate_predictions(LABELS, PROBS, CLASSES, groups=["p"] * 2 + [None] + ["q"] * 9)
    with pytest.raises(ValueError, match="confidence 1.5 must lie strictly between 0 and 1"):
        evaluate_predictions(LABELS, PROBS, CLASSES, confidence=1.5)
    with pytest.raises(ValueError, match="n_bootstrap -1"):
        evaluate_predictions(LABELS, PROBS, CLASSES, n_bootstrap=-1)
    with pytest.raises(TypeError, match="labels must be integer class indices, not bool"):
        evaluate_predictions(LABELS > 0, PROBS, CLASSES)
    with pytest.raises(TypeError, match="classes must be a sequence of class names, not str"):
        evaluate_predictions(LABELS, PROBS, "abc")


def test_write_report_writes_json_and_valid_pngs(tmp_path):
    probs = np.hstack([PROBS, np.zeros((12, 1))])
    report = evaluate_predictions(LABELS, probs, [*CLASSES, "d"], n_bootstrap=50, seed=2)
    paths = write_report(report, tmp_path / "out", prefix="study")

    assert paths == {
        "metrics": tmp_path / "out" / "study_metrics.json",
        "confusion": tmp_path / "out" / "study_confusion.png",
        "roc": tmp_path / "out" / "study_roc.png",
    }
    assert json.loads(paths["metrics"].read_text(encoding="utf-8")) == report
    for key in ("confusion", "roc"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(paths[key]) as image:
            assert image.format == "PNG"
            assert image.size[0] >= 400 and image.size[1] >= 400

    # The plots also draw from a report read back from JSON.
    loaded = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    assert plot_confusion_matrix(loaded, tmp_path / "c.png") == tmp_path / "c.png"
    assert plot_roc_curves(loaded, str(tmp_path / "r.png")) == tmp_path / "r.png"
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_plot_and_write_refuse_bad_arguments(tmp_path):
    report = evaluate_predictions(LABELS, PROBS, CLASSES, n_bootstrap=0)
    with pytest.raises(ValueError, match="must end in .png"):
        plot_roc_curves(report, tmp_path / "roc.pdf")
    with pytest.raises(ValueError, match=r"report lacks \['confusion_matrix'\]"):
        plot_confusion_matrix({k: v for k, v in report.items() if k != "confusion_matrix"}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="prefix '../x' must be a non-empty file name stem"):
        write_report(report, tmp_path, prefix="../x")
    assert not any(tmp_path.iterdir())
