"""Failures: error types per round (chart), timeouts and limits, problems that never got solved; a click on a
bar (or the pickers below it) lists example candidates, each linking to its turn on the Trajectories page."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import common as c
from dashboard.common import df, q

LIMITS = ("timeout", "memory", "output_limit", "sandbox_error")

st.title("Failures")
exp_id = c.current_experiment()
params = st.query_params

cols = st.columns(2)
source = cols[0].radio("Candidates of", ["train", "eval"], horizontal=True, key="fail_source",
                       format_func={"train": "training rollouts", "eval": "evaluation chains"}.get)
suite = cols[1].radio("Verdict on", ["private", "public"], horizontal=True, key="fail_suite",
                      format_func={"private": "private tests (oracle)", "public": "public tests"}.get)

rounds_all = q("dash_rounds", exp_id)
shown_rounds = c.window_rounds(rounds_all)
rows = c.q_per_round("dash_error_types", shown_rounds, suite=suite, source=source)
if not rows:
    st.info("No executed candidates in this scope yet. " + c.EMPTY_HINT)
    c.footer()
    st.stop()

frame = df(rows)
frame["round"] = frame["round"].astype(int)
failures = frame[frame["error_type"] != "passed"].copy()

st.header("Error types per round")
totals = frame.groupby("round")["candidates"].sum()
failures["share (%)"] = failures.apply(lambda r: 100.0 * r["candidates"] / totals[r["round"]], axis=1)
if failures.empty:
    st.success("Every executed candidate in this scope passed.")
else:
    pick = alt.selection_point(name="pick", fields=["round", "error_type"])
    chart = (
        alt.Chart(failures)
        .mark_bar()
        .encode(x=alt.X("round:O", axis=alt.Axis(labelAngle=0)), y=alt.Y("sum(candidates):Q", title="candidates"),
                color=alt.Color("error_type:N", title="error type"),
                opacity=alt.condition(pick, alt.value(1.0), alt.value(0.5)),
                tooltip=["round", "error_type", "status", "candidates", alt.Tooltip("share (%):Q", format=".1f")])
        .add_params(pick)
        .properties(height=300)
    )
    event = st.altair_chart(chart, on_select="rerun", key="fail_chart")
    st.caption("Each failing candidate counted once under its execution status; `failed`/`error` are split by the "
               "exception type in the sanitized feedback. Click a bar to list examples below. Rounds: "
               f"{st.session_state.get('rounds_window', 'last 5 rounds')} (sidebar).")
    picked = []
    try:
        picked = event.selection.get("pick") or []  # type: ignore[union-attr]
    except AttributeError:
        picked = []
    if picked:
        p0 = picked[0]
        if st.session_state.get("_fail_last_pick") != p0:
            st.session_state["_fail_last_pick"] = p0
            st.session_state["fail_round"] = int(p0.get("round"))
            st.session_state["fail_type"] = p0.get("error_type")
    table = failures.pivot_table(index="error_type", columns="round", values="candidates", aggfunc="sum",
                                 fill_value=0)
    table.columns = [f"round {x}" for x in table.columns]
    st.dataframe(table, key="fail_table")

# -- limits -------------------------------------------------------------------------------------------
st.header("Timeouts and limits")
lim = frame[frame["status"].isin(LIMITS)]
if lim.empty:
    st.success("No timeouts, memory, output or sandbox limits hit in this scope.")
else:
    lt = lim.groupby(["round", "status"]).agg(candidates=("candidates", "sum"), avg_ms=("avg_ms", "mean"),
                                              max_ms=("max_ms", "max")).reset_index()
    lt["share (%)"] = lt.apply(lambda r: 100.0 * r["candidates"] / totals[r["round"]], axis=1)
    st.dataframe(lt.round(1), hide_index=True, key="limits")
dur = frame.groupby("round").apply(
    lambda g: pd.Series({"executions": g["executions"].sum(),
                         "mean ms": (g["avg_ms"] * g["candidates"]).sum() / g["candidates"].sum(),
                         "max ms": g["max_ms"].max()}), include_groups=False).reset_index()
st.caption("Execution time per round (all statuses)")
st.dataframe(dur.round(1), hide_index=True, key="durations")

# -- examples -----------------------------------------------------------------------------------------
st.header("Examples")
round_ids = frame.drop_duplicates("round").set_index("round")["round_id"].to_dict()
rounds_avail = sorted(round_ids)
types_avail = sorted(failures["error_type"].unique()) if not failures.empty else []
if not types_avail:
    st.info("No failures to show.")
else:
    want_round, want_type = params.get("round"), params.get("error")
    if want_round is not None and "fail_round" not in st.session_state:
        try:
            st.session_state["fail_round"] = int(want_round)
        except ValueError:
            pass
    if want_type and "fail_type" not in st.session_state:
        st.session_state["fail_type"] = want_type
    if st.session_state.get("fail_round") not in rounds_avail:
        st.session_state["fail_round"] = rounds_avail[-1]
    in_round = sorted(failures[failures["round"] == st.session_state["fail_round"]]["error_type"].unique())
    type_opts = in_round or types_avail
    if st.session_state.get("fail_type") not in type_opts:
        st.session_state["fail_type"] = type_opts[0]
    ec = st.columns(2)
    rnd = ec[0].selectbox("Round", rounds_avail, key="fail_round")
    etype = ec[1].selectbox("Error type", type_opts, key="fail_type")
    cursor_key = f"fail_after::{source}:{suite}:{rnd}:{etype}"
    after = st.session_state.get(cursor_key, 0)
    examples = q("dash_failure_examples", round_ids[rnd], etype, suite=suite, source=source, after_id=after,
                 limit=20)
    if not examples:
        st.info("No examples on this page.")
    for ex in examples:
        with st.container(border=True):
            st.markdown(f"**{ex['external_id']}** · rollout #{ex['rollout_id']} · turn {ex['turn']} · "
                        f"{'chosen' if ex['chosen'] else 'not chosen'} · `{ex['status']}` · "
                        f"{ex['duration_ms']:.0f} ms")
            st.code(ex["feedback"] or "(no feedback)", language=None, wrap_lines=True)
            c.link("trajectories", f"Open {ex['external_id']} rollout #{ex['rollout_id']} turn {ex['turn']} →",
                   problem=ex["external_id"], rollout=ex["rollout_id"], turn=ex["turn"])
    nav = st.columns(3)
    if after and nav[0].button("⟲ First page", key="fail_first"):
        st.session_state[cursor_key] = 0
        st.rerun()
    if len(examples) == 20 and nav[1].button("Next 20 →", key="fail_next"):
        st.session_state[cursor_key] = examples[-1]["candidate_id"]
        st.rerun()

# -- never solved -------------------------------------------------------------------------------------
st.header("Problems never solved")
st.caption("Training: no candidate of any round passed the private tests. Evaluation: no chain solved it.")
u_off_key = f"unsolved_page_{source}"
page = st.session_state.get(u_off_key, 0)
unsolved = q("dash_unsolved_problems", exp_id, source=source, limit=c.PAGE_SIZE + 1, offset=page * c.PAGE_SIZE)
more = len(unsolved) > c.PAGE_SIZE
unsolved = unsolved[: c.PAGE_SIZE]
if not unsolved:
    st.success("Every attempted problem was solved at least once.")
else:
    st.dataframe(df(unsolved).drop(columns=["problem_id"]), hide_index=True, key="unsolved")
    st.markdown("Open one:")
    lc = st.columns(4)
    for i, u in enumerate(unsolved):
        with lc[i % 4]:
            c.link("trajectories", f"{u['external_id']} →", problem=u["external_id"])
    pc = st.columns(3)
    if page and pc[0].button("← Previous", key="unsolved_prev"):
        st.session_state[u_off_key] = page - 1
        st.rerun()
    if more and pc[1].button("Next →", key="unsolved_next"):
        st.session_state[u_off_key] = page + 1
        st.rerun()

c.footer()
