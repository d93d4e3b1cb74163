"""The strict YAML loader: alias bombs, duplicate keys, line numbers, YAML 1.2 numbers."""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path

import pytest
import yaml

from tce_ray.study.yaml_load import MAX_VALUES, YamlLoadError, load_yaml

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic: level k repeats level k-1 ``width`` times (width**levels strings)."""
    lines = ['a0: &a0 "lol"']
    for k in range(1, levels + 1):
        lines.append(f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_fast_with_the_alias_line():
    text = billion_laughs()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(YamlLoadError) as info:
        load_yaml(text)
    elapsed = time.monotonic() - t0
    err = info.value
    # 9**6 = 531441 > MAX_VALUES: level 6 is the first whose own expansion is too big;
    # the alias named is the outermost one being expanded there, at its line and key path
    assert 9**5 < MAX_VALUES < 9**6
    assert err.line == 7 and err.path == "a6.0"
    assert "*a5" in err.message and "more than 100,000 values" in err.message
    assert "\n" not in str(err)
    assert elapsed < 10, elapsed
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 500, grown_mib  # yaml.safe_load + a tree walk reach gigabytes


def test_a_bomb_inside_a_study_key_names_that_key():
    text = "name: x\nsearch:\n  big: &b [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n  x:\n    - [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    doc = load_yaml(text)
    assert doc.data["search"]["x"][0][9] == list(range(1, 11))
    assert doc.data["search"]["x"][0][0] is not doc.data["search"]["x"][0][1]  # copies, not shared objects
    with pytest.raises(YamlLoadError) as info:
        load_yaml(text, max_values=80)
    assert info.value.line == 5 and info.value.path == "search.x.0.5" and "*b" in info.value.message


def test_a_large_plain_document_is_limited_too():
    text = "xs: [" + ", ".join("1" for _ in range(300)) + "]\n"
    assert len(load_yaml(text).data["xs"]) == 300
    with pytest.raises(YamlLoadError, match="more than 100 values"):
        load_yaml(text, max_values=100)
    with pytest.raises(YamlLoadError, match="characters"):
        load_yaml(text, max_chars=100)


def test_recursive_alias_is_refused():
    with pytest.raises(YamlLoadError) as info:
        load_yaml("a: &a [1, *a]\n")
    assert "recursive alias" in info.value.message and info.value.line == 1


def test_duplicate_keys_name_both_lines():
    text = "train:\n  steps: 4\n  batch_size: 2\n  steps: 8\n"
    assert yaml.safe_load(text)["train"]["steps"] == 8  # what PyYAML does silently
    with pytest.raises(YamlLoadError) as info:
        load_yaml(text)
    err = info.value
    assert err.line == 4 and err.path == "train.steps"
    assert "first at line 2, again at line 4" in err.message
    # duplicates at the top level and in flow mappings too
    with pytest.raises(YamlLoadError, match="line 1, again at line 2"):
        load_yaml("name: a\nname: b\n")
    with pytest.raises(YamlLoadError, match="duplicate key 'low'"):
        load_yaml("t: {low: 1, low: 2}\n")


def test_merge_keys_may_be_overridden_but_not_repeated():
    text = "base: &base {steps: 4, batch_size: 2}\ntrain:\n  <<: *base\n  steps: 10\n"
    doc = load_yaml(text)
    assert doc.data["train"] == {"steps": 10, "batch_size": 2} == yaml.safe_load(text)["train"]
    assert doc.lines[("train", "steps")] == 4 and doc.lines[("train", "batch_size")] == 1
    two = "a: &a {x: 1}\nb: &b {x: 2, y: 3}\nc:\n  <<: [*a, *b]\n"
    assert load_yaml(two).data["c"] == {"x": 1, "y": 3} == yaml.safe_load(two)["c"]  # earlier source wins
    with pytest.raises(YamlLoadError, match="merge key"):
        load_yaml("c:\n  <<: 5\n")


def test_lines_match_the_composed_document_for_every_shipped_study():
    for path in sorted(STUDIES.glob("*.yaml")):
        text = path.read_text()
        doc = load_yaml(text)
        assert doc.data == yaml.safe_load(text), path.name
        expected: dict = {}
        root = yaml.compose(text, Loader=yaml.SafeLoader)

        def walk(node, p):
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    expected[p + (k.value,)] = k.start_mark.line + 1
                    walk(v, p + (k.value,))
            elif isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    expected[p + (i,)] = item.start_mark.line + 1
                    walk(item, p + (i,))

        walk(root, ())
        expected[()] = root.start_mark.line + 1
        # keys as text (compose) vs constructed (ints stay ints): compare as strings
        assert {tuple(map(str, k)): v for k, v in doc.lines.items()} == {tuple(map(str, k)): v for k, v in expected.items()}


def test_numbers_follow_yaml_1_2():
    doc = load_yaml("a: 1e-3\nb: 1e400\nc: .inf\nd: 1.0e5\ne: -.inf\nf: .nan\ng: 1_000\nh: '1e3'\ni: 7\nj: 2.5\n")
    d = doc.data
    assert d["a"] == 0.001 and d["d"] == 100000.0 and d["g"] == 1000 and d["i"] == 7 and d["j"] == 2.5
    assert d["b"] == math.inf and d["c"] == math.inf and d["e"] == -math.inf and math.isnan(d["f"])
    assert d["h"] == "1e3"  # quoted stays a string
    assert isinstance(d["i"], int) and load_yaml("x: true").data["x"] is True


@pytest.mark.parametrize(
    "text,line,words",
    [
        ("name: [oops\n", 2, ["YAML syntax error"]),
        ("a: 1\n---\nb: 2\n", 2, ["one YAML document"]),
        ("a: *nope\n", 1, ["undefined alias 'nope'"]),
        ("a: &x 1\nb: &x 2\n", 2, ["duplicate anchor 'x'", "first at line 1"]),
        ("a: !!python/object:os.system x\n", 1, ["tag", "not supported"]),
        ("a: !!set {x, y}\n", 1, ["tag", "not supported"]),
        ("? [a, b]\n: 1\n", 1, ["a key must be a plain value"]),
        ("a: " + "[" * 100 + "]" * 100 + "\n", 1, ["nested more than 64 levels"]),
        ("a: " + "[" * 2000 + "]" * 2000 + "\n", None, ["nested too deeply"]),
        ("a:\n\tb: 1\n", 2, ["YAML syntax error"]),
    ],
)
def test_bad_documents_give_one_line(text, line, words):
    with pytest.raises(YamlLoadError) as info:
        load_yaml(text)
    assert info.value.line == line
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_empty_document():
    assert load_yaml("").data is None and load_yaml("# only a comment\n").data is None
