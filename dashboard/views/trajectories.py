"""Trajectories: pick a problem (search by id or text) -> its rollouts -> each turn with the exact messages
the model saw, the code, the feedback, per-test outcomes, verifier scores and the chosen flag; side-by-side
compare of two turns. ``?problem=mbpp/601&rollout=12&turn=2`` opens a turn directly (other pages link here)."""

from __future__ import annotations

import difflib
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import common as c
from dashboard.common import q

st.title("Trajectories")
params = st.query_params

# -- problem ------------------------------------------------------------------------------------------
left, right = st.columns([3, 1])
search = left.text_input("Find a problem", key="traj_search", placeholder="id or text, e.g. mbpp/601 or 'prime'")
only_run = right.toggle("Only problems with rollouts", value=True, key="traj_only_run")
total = q("dash_count_problems", search, with_rollouts=only_run)
off = c.pager("traj_problem_page", total, c.PAGE_SIZE)
found = q("dash_search_problems", search, with_rollouts=only_run, limit=c.PAGE_SIZE, offset=off)

wanted = params.get("problem")
options = [p["external_id"] for p in found]
labels = {p["external_id"]: f"{p['external_id']} — {p['prompt'][:90]} ({p['rollouts']} rollouts)" for p in found}
if wanted and wanted not in options:
    options.insert(0, wanted)
if not options:
    if total == 0 and not search:
        st.info("No problems with rollouts yet. " + c.EMPTY_HINT)
    else:
        st.warning(f"No problem matches “{search}”.")
    c.footer()
    st.stop()
if st.session_state.get("traj_problem") not in options:
    st.session_state["traj_problem"] = wanted if wanted in options else options[0]
ext = st.selectbox("Problem", options, key="traj_problem", format_func=lambda e: labels.get(e, e))
if ext != wanted:
    st.query_params["problem"] = ext
    for k in ("rollout", "turn"):
        if k in st.query_params:
            del st.query_params[k]
    wanted_rollout = None
else:
    wanted_rollout = params.get("rollout")

problem = q("dash_problem", ext)
if problem is None:
    st.error(f"Problem `{ext}` is not in the store.")
    c.footer()
    st.stop()

st.subheader(f"{problem['external_id']} · {problem['dataset']} {problem['split']}")
with st.expander("Problem text and tests", expanded=False):
    st.markdown(problem["prompt"])
    tcols = st.columns(2)
    tcols[0].markdown("**Public tests**")
    tcols[0].code("\n".join(problem["public_tests"] or []) or "(none)", language="python")
    tcols[1].markdown("**Private tests**")
    tcols[1].code("\n".join(problem["private_tests"] or []) or "(none)", language="python")
c.link("rankings", f"Rank {problem['external_id']}'s candidates by verifier score →", problem=ext)

# -- rollouts -----------------------------------------------------------------------------------------
n_rollouts = q("dash_count_problem_rollouts", problem["id"])
if n_rollouts == 0:
    st.info("This problem has no rollouts yet.")
    c.footer()
    st.stop()
st.markdown(f"**Rollouts** ({n_rollouts})")
r_off = c.pager("traj_rollout_page", n_rollouts, c.PAGE_SIZE)
rollouts = q("dash_problem_rollouts", problem["id"], limit=c.PAGE_SIZE, offset=r_off)


def owner(r: dict[str, Any]) -> str:
    if r.get("round_id") is not None:
        return f"{r['experiment']} round {r['round']}"
    return f"eval {r.get('evaluation')}"


table = pd.DataFrame([{
    "rollout": r["id"], "from": owner(r), "sample": r["sample_index"], "status": r["status"],
    "turns": r["num_turns"], "candidates": r["candidates"], "public": c.mark(r["public_passed"]),
    "label": c.mark(r["final_label"]), "generator": r["generator"],
} for r in rollouts])
st.dataframe(table, hide_index=True, key="traj_rollouts")

r_ids = [r["id"] for r in rollouts]
r_labels = {r["id"]: f"#{r['id']} · {owner(r)} · sample {r['sample_index']} · {r['num_turns']} turns · "
                     f"{c.mark(r['final_label'])}" for r in rollouts}
try:
    wanted_id = int(wanted_rollout) if wanted_rollout else None
except ValueError:
    wanted_id = None
if wanted_id is not None and wanted_id not in r_ids:
    r_ids.insert(0, wanted_id)
    r_labels[wanted_id] = f"#{wanted_id}"
if st.session_state.get("traj_rollout") not in r_ids:
    st.session_state["traj_rollout"] = wanted_id if wanted_id in r_ids else r_ids[0]
rid = st.selectbox("Rollout", r_ids, key="traj_rollout", format_func=lambda i: r_labels.get(i, str(i)))
if str(rid) != str(wanted_rollout or ""):
    st.query_params["rollout"] = str(rid)

detail = q("dash_rollout", rid)
if detail is None or detail["problem_id"] != problem["id"]:
    st.error(f"Rollout #{rid} is not a rollout of {ext}.")
    c.footer()
    st.stop()
try:
    focus_turn = int(params.get("turn")) if params.get("turn") else None
except ValueError:
    focus_turn = None


def outcomes(cand: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for kind in ("public", "private"):
        e = (cand.get("executions") or {}).get(kind)
        if e is None:
            rows.append({"suite": kind, "status": "not executed", "test": "", "outcome": "", "message": ""})
            continue
        tests = e.get("tests") or []
        if not tests:
            rows.append({"suite": kind, "status": e["status"], "test": "(no per-test record)", "outcome": "",
                         "message": (e.get("feedback") or "")[:300]})
        for t in tests:
            t = t if isinstance(t, dict) else {"test": str(t)}
            rows.append({"suite": kind, "status": e["status"], "test": t.get("test", ""),
                         "outcome": t.get("outcome", t.get("status", "")),
                         "message": str(t.get("message") or t.get("error") or "")[:300]})
    return pd.DataFrame(rows)


def candidate_view(cand: dict[str, Any], turn: dict[str, Any], key: str, *, compact: bool = False) -> None:
    """Code next to its feedback and per-test outcomes; raw response and the model's messages below."""
    scores = ", ".join(f"{s['verifier']}: {s['score']:.3f}" for s in cand.get("scores") or []) or "not scored"
    st.markdown(
        f"public {c.badge(cand['public_passed'])} · private (oracle) {c.badge(cand['private_passed'])} · "
        f"{'**chosen**' if cand['chosen'] else 'not chosen'} · verifier {scores} · "
        f"{cand.get('completion_tokens') or '–'} tokens · finish {cand.get('finish_reason') or '–'}"
    )
    code_col, fb_col = (st.container(), st.container()) if compact else st.columns([3, 2])
    with code_col:
        st.code(cand["code"] or "(no code extracted)", language="python", line_numbers=True)
    with fb_col:
        pub = (cand.get("executions") or {}).get("public")
        fb = turn.get("feedback") if cand["chosen"] else (pub or {}).get("feedback")
        st.caption("Feedback given to the model" if cand["chosen"] else "Public feedback of this candidate")
        st.code(fb or "(none)", language=None, wrap_lines=True)
        st.dataframe(outcomes(cand), hide_index=True, key=f"{key}_tests")
    with st.expander("Raw response" + ("" if compact else " and stdout/stderr")):
        st.code(cand["response"], language=None, wrap_lines=True)
        for kind in ("public", "private"):
            e = (cand.get("executions") or {}).get(kind)
            if e and (e.get("stderr") or e.get("stdout")):
                st.caption(f"{kind} stdout/stderr")
                st.code((e.get("stdout") or "") + "\n" + (e.get("stderr") or ""), language=None)
    if not compact:
        msgs = turn.get("messages") or []
        with st.expander(f"Messages the model saw ({len(msgs)})"):
            for msg in msgs:
                role = msg.get("role", "?") if isinstance(msg, dict) else "?"
                content = msg.get("content", "") if isinstance(msg, dict) else str(msg)
                st.caption(role)
                st.code(content, language=None, wrap_lines=True)


st.markdown(
    f"### Rollout #{detail['id']} · {owner(detail)} · sample {detail['sample_index']} · seed {detail['seed']} · "
    f"{detail['status']} · final label {c.badge(detail['final_label'])}"
)
for turn in detail["turns"]:
    cands = turn["candidates"]
    chosen = next((x for x in cands if x["chosen"]), cands[0] if cands else None)
    head = (f"Turn {turn['turn']} · {len(cands)} candidate{'s' if len(cands) != 1 else ''} · chosen: "
            f"public {c.mark(chosen and chosen['public_passed'])} · "
            f"private {c.mark(chosen and chosen['private_passed'])}")
    with st.expander(head, expanded=focus_turn in (None, turn["turn"])):
        if not cands:
            st.info("No candidates recorded for this turn.")
            continue
        shown = chosen
        if len(cands) > 1:
            summary = pd.DataFrame([{
                "n": x["sample_index"], "chosen": "✔" if x["chosen"] else "",
                "public": c.mark(x["public_passed"]), "private": c.mark(x["private_passed"]),
                "score": max((s["score"] for s in x["scores"]), default=None),
            } for x in cands])
            st.dataframe(summary, hide_index=True, key=f"cands_{turn['id']}")
            pick = st.radio("Candidate", [x["sample_index"] for x in cands], horizontal=True,
                            index=[x["sample_index"] for x in cands].index(chosen["sample_index"]),
                            key=f"pick_{turn['id']}")
            shown = next(x for x in cands if x["sample_index"] == pick)
        candidate_view(shown, turn, key=f"turn_{turn['id']}")

# -- compare two turns --------------------------------------------------------------------------------
st.header("Compare two turns")
choices = []
for r in rollouts:
    for t in range(1, (r["num_turns"] or 0) + 1):
        choices.append((r["id"], t))
if detail["id"] not in {x[0] for x in choices}:
    choices = [(detail["id"], t["turn"]) for t in detail["turns"]] + choices
if len(choices) < 2:
    st.info("This problem has a single turn on this page of rollouts — nothing to compare.")
else:
    own = [x for x in choices if x[0] == detail["id"]]
    default_a = own[0] if own else choices[0]
    default_b = own[-1] if len(own) > 1 else next(x for x in choices if x != default_a)

    def fmt(x):
        return f"rollout #{x[0]} · turn {x[1]}"

    ca, cb = st.columns(2)
    a = ca.selectbox("Left", choices, index=choices.index(default_a), format_func=fmt, key="cmp_a")
    b = cb.selectbox("Right", choices, index=choices.index(default_b), format_func=fmt, key="cmp_b")
    sides = []
    for col, (r_id, t_ix), key in ((ca, a, "cmp_left"), (cb, b, "cmp_right")):
        d = detail if r_id == detail["id"] else q("dash_rollout", r_id)
        turn = next((t for t in (d or {}).get("turns", []) if t["turn"] == t_ix), None)
        cand = next((x for x in (turn or {}).get("candidates", []) if x["chosen"]), None)
        with col:
            if cand is None:
                st.info("No chosen candidate at that turn.")
                sides.append("")
                continue
            candidate_view(cand, turn, key=key, compact=True)
            sides.append(cand["code"] or "")
    if len(sides) == 2 and a != b:
        diff = "\n".join(difflib.unified_diff(sides[0].splitlines(), sides[1].splitlines(), fromfile=fmt(a),
                                              tofile=fmt(b), lineterm=""))
        st.markdown("**Code diff**")
        st.code(diff or "(identical code)", language="diff")

c.footer()
