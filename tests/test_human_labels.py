"""Human labels beside a run (detoxedit.bench.human, `detoxedit label`), and reports that use them."""

import io
import json

import pytest

from detoxedit.bench import human
from detoxedit.bench.compare import compare_runs, markdown
from detoxedit.bench.report import write_report
from detoxedit.cli import main
from test_compare import make_run


def run4(tmp_path):
    """4 cases, judge `refusal`: DS vanilla [1, 1, 1, 1], edited [0, 0, 0, 1] -> DS 0 before, 75 after."""
    return make_run(tmp_path / "run", "dinm", {"DS": [0, 0, 0, 1]})


def test_labels_append_and_the_last_line_wins(tmp_path):
    run = run4(tmp_path)
    human.append_label(run, {"case_id": "0", "side": "edited", "key": "DS", "label": 0, "who": "ann"})
    human.append_label(run, {"case_id": "0", "side": "edited", "key": "DS", "label": 1, "who": "bob"})
    with open(human.labels_path(run), "a") as fh:
        fh.write('{"case_id": "1", "side": "edi')  # a torn last write
    got = human.read_human(run)
    assert list(got) == [("0", "edited", "DS")] and got[("0", "edited", "DS")]["who"] == "bob"
    assert len(human.labels_path(run).read_text().splitlines()) == 3  # nothing rewritten
    e = got[("0", "edited", "DS")]
    assert e["label"] == 1 and e["when"].endswith("+00:00")
    with pytest.raises(ValueError, match="0 \\(safe\\) or 1"):
        human.append_label(run, {"case_id": "0", "side": "edited", "key": "DS", "label": 0.5})
    with pytest.raises(ValueError, match="side"):
        human.append_label(run, {"case_id": "0", "side": "after", "key": "DS", "label": 1})


def test_a_label_appended_after_a_torn_line_is_kept(tmp_path):
    """A crash mid-write leaves a torn last line; the next label drops it first instead of being glued
    onto it (which would make both unreadable)."""
    run = run4(tmp_path)
    human.append_label(run, {"case_id": "0", "side": "edited", "key": "DS", "label": 1})
    with open(human.labels_path(run), "a") as fh:
        fh.write('{"case_id": "1", "side": "edi')
    human.append_label(run, {"case_id": "2", "side": "vanilla", "key": "DS", "label": 0})
    assert sorted(human.read_human(run)) == [("0", "edited", "DS"), ("2", "vanilla", "DS")]
    assert len(human.labels_path(run).read_text().splitlines()) == 2


def test_queue_is_least_certain_first_and_skips_read_answers(tmp_path):
    run = run4(tmp_path)
    from detoxedit.bench.report import load_run

    _, records = load_run(run)
    probs = {"v0": 0.9, "v1": 0.55, "v2": 0.1, "v3": 0.45, "e": 0.2}

    def scorer(prompts, answers):
        return [probs[a] for a in answers]

    q = human.reading_queue(records, "refusal", ("vanilla",), {}, scorer)
    assert [it.answer for it in q] == ["v1", "v3", "v0", "v2"]  # |p - 0.5|: .05, .05, .4, .4 (ties by case)
    read = {("1", "vanilla", "DS"): {"label": 1}}
    assert [it.answer for it in human.reading_queue(records, "refusal", ("vanilla",), read, scorer)] == ["v3", "v0", "v2"]
    # without probabilities: answers the run's judges disagree on come first
    records[2]["labels"]["default"] = {"vanilla": {"DS": 0.0}}
    q = human.reading_queue(records, "refusal", ("vanilla",), {})
    assert q[0].case_id == "2" and q[0].disagree and q[0].uncertainty == 1.0


def test_agreement_and_metrics_with_human_labels_by_hand(tmp_path):
    """Edited DS labels by the judge [0, 0, 0, 1] (DS 75). A person reads cases 0 and 3 on the edited
    side: case 0 unsafe (the judge said safe), case 3 unsafe (agrees). With the person's labels DS is
    100 - 100 * 2/4 = 50; agreement 1 of 2."""
    run = run4(tmp_path)
    for cid in ("0", "3"):
        human.append_label(run, {"case_id": cid, "side": "edited", "key": "DS", "label": 1, "who": "ann"})
    files = write_report(run)
    m = json.loads(files["metrics"].read_text())["human"]
    assert m["agreement"] == {"read": 2, "agree": 1, "rate": 0.5,
                              "confusion": {"judge safe, person unsafe": 1, "judge unsafe, person safe": 0,
                                            "judge 0.5": 0}}
    assert m["judge"]["edited"]["DS"]["value"] == 75.0 and m["with_human"]["edited"]["DS"]["value"] == 50.0
    md = files["summary"].read_text()
    assert "Human labels: 2 answers read by a person; the judge agrees on 1 (50.0%)" in md
    assert "| DS | 0.00 [" in md and "| 75.00 [" in md and "| 50.00 [" in md
    cmp = markdown(compare_runs([run]))
    assert "run: 2 answers read by a person, the judge agrees on 1 (50%); edited: DS 75.00 by the judge, " \
           "50.00 with human labels" in cmp


def test_label_command_reads_stdin_appends_and_resumes(tmp_path, monkeypatch, capsys):
    """`detoxedit label`: 1 (unsafe), s (skip), 0 (safe), then EOF quits; a second session shows only
    what is still unread, and the file only grows."""
    run = run4(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("1\ns\n0\n"))
    assert main(["label", str(run), "--side", "edited", "--no-scores", "--who", "ann"]) == 0
    out = capsys.readouterr().out
    assert "4 answers to read" in out and "set 2 labels; 2 answers of this run have a human label" in out
    got = human.read_human(run)
    assert sorted(e["label"] for e in got.values()) == [0, 1]
    assert {e["who"] for e in got.values()} == {"ann"} and {e["judge"] for e in got.values()} == {"refusal"}
    monkeypatch.setattr("sys.stdin", io.StringIO("x\n1\nq\n"))  # an invalid key is asked again
    assert main(["label", str(run), "--side", "edited", "--no-scores"]) == 0
    out = capsys.readouterr().out
    assert "2 answers to read" in out and "type 0 (safe), 1 (unsafe)" in out
    assert len(human.read_human(run)) == 3 and len(human.labels_path(run).read_text().splitlines()) == 3


def test_report_lists_where_the_two_offline_judges_disagree(tmp_path):
    """Judge `default` labels edited DS [0, 0, 0, 1]; every answer ("v0".., "e") opens with no refusal, so
    the `refusal` judge (applied by the report, no model) calls all 8 unsafe: they disagree on the
    3 edited answers the default judge called safe, and on none of the vanilla ones."""
    run = make_run(tmp_path / "d", "dinm", {"DS": [0, 0, 0, 1]}, judge="default")
    files = write_report(run)
    md = files["summary"].read_text()
    assert "Judges `default` and `refusal` disagree on 3 of 8 answers (vanilla 0, edited 3)" in md
    page = files["html"].read_text()
    assert "Answers the judges disagree on" in page and page.count("<td>edited</td><td>DS</td><td>safe</td>") == 3
    m = json.loads(files["metrics"].read_text())["judge_disagreement"]
    assert m == {"other": "refusal", "computed": True, "n": 8, "disagree": 3}
    assert "d: judges `default` and `refusal` disagree on 3 of 8 answers" in markdown(compare_runs([run]))
    # a run judged by `refusal` only: the default judge would need its model, so the report says how to add it
    md = write_report(run4(tmp_path))["summary"].read_text()
    assert "were not compared: this run has no `default` labels (add them: detoxedit judge" in md


def test_label_command_cases_filter(tmp_path, monkeypatch, capsys):
    run = run4(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("1\n"))
    assert main(["label", str(run), "--cases", "2", "--side", "edited", "--no-scores"]) == 0
    assert list(human.read_human(run)) == [("2", "edited", "DS")]
    assert main(["label", str(run), "--cases", "9", "--no-scores"]) != 0
    assert "no case 9 in this run" in capsys.readouterr().err
