"""QA number parsing (formats, selection rule, what is not a number) and per-property MAE / valid rate."""

import pytest

from molbridge.core.errors import MolbridgeError
from molbridge.plugins.tasks.numbers import flat_metrics, numbers, parse_number, property_errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The LogP for the input molecule is -1.23.", -1.23),
        ("12", 12.0),  # integers are valid (the reference counted them invalid)
        ("The Molecular Weight for the input molecule is 180.", 180.0),
        ("+3.5", 3.5),
        ("\u22120.5", -0.5),  # unicode minus
        ("1,234.5", 1234.5),
        ("12,345,678", 12345678.0),
        (".5", 0.5),
        ("1.2e-3 eV", 1.2e-3),
        ("1.2E+03", 1200.0),
        ("1.2 x 10^-3", 1.2e-3),
        ("1.2×10⁻³", 1.2e-3),  # unicode times and superscripts
        ("1.2 * 10**-3", 1.2e-3),
        ("approximately 250 g/mol", 250.0),
        ("-5.2eV", -5.2),
        ("LogP: -0.73", -0.73),
        ("TPSA = 37.3 Å²", 37.3),
        ("TPSA 37.3 Å²", 37.3),  # the 2 of Å² is not a candidate
        ("180.2 g·mol⁻¹", 180.2),
    ],
)
def test_formats(text, expected):
    assert parse_number(text) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "text",
    ["", "no idea", "I cannot determine it.", "C7H6O2", "nan", "inf", "1e999", "version 1.2.3", "2-methylpropane"],
)
def test_no_number(text):
    assert parse_number(text) is None


@pytest.mark.parametrize(
    ("text", "unit", "expected"),
    [
        # digits inside names and formulas are not candidates
        ("The molecular weight of C7H6O2 is 122.12 g/mol.", None, 122.12),
        ("The GFN2-xTB HOMO-LUMO gap for the input molecule is 5.23 eV.", None, 5.23),
        ("HOMO-1 lies at -6.1", None, -6.1),
        ("2,4-dinitrophenol has a LogP of 1.5", None, 1.5),
        ("A 3-ring molecule: 1.5", None, 1.5),
        # rule 1: the number carrying the requested unit (known spellings too)
        ("For 12 heavy atoms the weight is 180.2 g/mol", "g/mol", 180.2),
        ("It has 3 rings and weighs 180.2 Da", "g/mol", 180.2),
        ("The gap is 0.19 Hartree, that is 5.2 eV", "eV", 5.2),
        ("With 2 donors, TPSA 37.3 Å²", " Å²", 37.3),
        ("With 2 donors, TPSA 37.3 A^2", "Å^2", 37.3),
        ("5 meV or 1.5 eV", "eV", 1.5),  # meV is not eV
        # rule 2: the first number after the first answer marker
        ("The LogP of this molecule is about 1.2, based on 3 rings", None, 1.2),
        ("The gap is 5.2 eV, which is 0.19 Hartree", None, 5.2),
        ("Its value: 7, or perhaps 8", None, 7.0),
        # rule 3: the last number
        ("Considering 3 rings and 2 donors, I estimate 1.8", None, 1.8),
        ("-1.2 (estimated)", None, -1.2),
        # uncertainties and range bounds are not answers
        ("1.2 ± 0.3", None, 1.2),
        ("1.2 +/- 0.3", None, 1.2),
        ("1.2-1.5", None, 1.2),
        # a unit that never appears falls back to rules 2 and 3
        ("The LogP is 2.5", "g/mol", 2.5),
    ],
)
def test_selection_rule(text, unit, expected):
    assert parse_number(text, unit) == pytest.approx(expected)


def test_numbers_lists_candidates_in_order():
    assert [v for _, _, v in numbers("C6H6 has 6 carbons, MW 78.11 and logP 1.69")] == [6.0, 78.11, 1.69]


def test_property_errors_by_hand():
    predictions = [
        "The LogP for the input molecule is 1.5.",  # |1.5 - 1.0| = 0.5
        "The LogP for the input molecule is -2.",  # integer: valid, |-2 - (-1)| = 1
        "I do not know.",  # invalid
        "The Molecular Weight for the input molecule is 180.5 g/mol.",  # |180.5 - 180.16| = 0.34
    ]
    targets = [1.0, "The LogP for the input molecule is -1.00.", 0.3, 180.16]
    properties = ["LogP", "LogP", "LogP", "Molecular Weight"]
    report = property_errors(predictions, targets, properties, units={"Molecular Weight": "g/mol"})
    assert report["LogP"] == {
        "mae": pytest.approx(0.75),
        "medae": pytest.approx(0.75),
        "valid_rate": pytest.approx(2 / 3),
        "n": 3,
        "n_valid": 2,
    }
    assert report["Molecular Weight"] == {
        "mae": pytest.approx(0.34),
        "medae": pytest.approx(0.34),
        "valid_rate": 1.0,
        "n": 1,
        "n_valid": 1,
    }
    assert report["overall"] == {"n": 4, "n_valid": 3, "valid_rate": 0.75}


def test_property_without_valid_answer_has_no_mae():
    report = property_errors(["unknown", "no idea"], [1.0, 2.0], ["HOMO", "HOMO"])
    assert report["HOMO"] == {"mae": None, "medae": None, "valid_rate": 0.0, "n": 2, "n_valid": 0}
    assert flat_metrics(report, "test/") == {
        "test/HOMO/valid_rate": 0.0,
        "test/HOMO/n": 2.0,
        "test/HOMO/n_valid": 0.0,
        "test/overall/n": 2.0,
        "test/overall/n_valid": 0.0,
        "test/overall/valid_rate": 0.0,
    }


def test_one_wild_answer_moves_the_mean_error_not_the_median():
    predictions = ["The LogP is 1.1.", "The LogP is 2.2.", "The LogP is 2.7.", "The LogP is 3000.39 eV."]
    report = property_errors(predictions, [1.0, 2.0, 3.0, 4.0], ["LogP"] * 4)["LogP"]
    assert report["medae"] == pytest.approx(0.25)  # median of 0.1, 0.2, 0.3, 2996.39
    assert report["mae"] == pytest.approx((0.1 + 0.2 + 0.3 + 2996.39) / 4)


def test_bad_input_names_the_record():
    with pytest.raises(MolbridgeError, match=r"record 1 \(LogP\).*'no value'"):
        property_errors(["1.0", "2.0"], [1.0, "no value"], ["LogP", "LogP"])
    with pytest.raises(MolbridgeError, match="record 0 .*prediction is NoneType"):
        property_errors([None], [1.0], ["LogP"])
    with pytest.raises(MolbridgeError, match="2 predictions, 1 targets, 2 properties"):
        property_errors(["1", "2"], [1.0], ["LogP", "LogP"])
    with pytest.raises(MolbridgeError, match="'overall' is reserved"):
        property_errors(["1"], [1.0], ["overall"])
