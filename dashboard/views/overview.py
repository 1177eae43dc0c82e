"""Overview: experiments and rounds, accuracy per round and per turn, public-vs-private gap, verifier-vs-oracle
disagreement, queue and job state, and how long each step took."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import common as c
from dashboard.common import df, pct, q

st.title("Overview")
exp_id = c.current_experiment()
summary = q("dash_summary")

cols = st.columns(6)
for col, (label, key) in zip(cols, [("Problems", "problems"), ("Rounds", "rounds"), ("Rollouts", "rollouts"),
                                     ("Candidates", "candidates"), ("Executions", "executions"),
                                     ("Evaluations", "evaluations")]):
    col.metric(label, f"{summary.get(key, 0):,}")

if not summary.get("rounds") and not summary.get("evaluations") and not summary.get("rollouts"):
    st.info(c.EMPTY_HINT)

# -- rounds ---------------------------------------------------------------------------------------
st.header("Rounds")
rounds = q("dash_rounds", exp_id)
if not rounds:
    st.info("No rounds yet — queue one with `mucode round run NAME` (or `mucode demo`).")
else:
    table = pd.DataFrame([{
        "experiment": r["experiment"], "round": r["round"], "final": "yes" if r.get("final") else "",
        "status": r["status"],
        "generator": r["generator"], "verifier in": r["verifier_in"], "verifier out": r["verifier_out"],
        "generator out": r["generator_out"], "problems": r["problems"], "rollouts": r["rollouts"],
        "solved": pct(r["rollouts_solved"] / r["rollouts_done"]) if r["rollouts_done"] else "–",
        "turns": r["turns"],
        "took": c.seconds(r["seconds"]), "error": r["error"] or "",
    } for r in rounds])
    st.dataframe(table, hide_index=True)

# -- accuracy per round (evaluations) ---------------------------------------------------------------
st.header("Accuracy per round")
evals = q("dash_evaluations", exp_id)
acc = c.eval_turn_success(evals)
if not evals or not acc:
    st.info("No evaluation results yet — the round's `evaluate` step (or `mucode eval`) writes them: "
            "greedy and Best-of-N on MBPP test and HumanEval.")
else:
    ev_by_id = {e["id"]: e for e in evals}
    rows = []
    for a in acc:
        e = ev_by_id.get(a["evaluation_id"])
        if e is None:
            continue
        rows.append({"evaluation": e["name"], "round": e["round"], "pair": c.eval_pair(e),
                     "dataset": e["dataset"], "mode": e["mode"],
                     "selector": e["selector"] or "", "N": e["num_candidates"], "chains": e["num_chains"],
                     "turn": a["turn"], "max_turns": e["max_turns"],
                     "true success": 100.0 * a["true_success"], "public success": 100.0 * a["public_success"],
                     "any-of-chains": 100.0 * a["any_success"], "problems": a["problems"]})
    long = pd.DataFrame(rows)
    long["series"] = long["dataset"] + " · " + long["mode"]
    final = long[long["turn"] == long["max_turns"]].copy()
    final["round"] = final["round"].fillna(-1).astype(int)
    chart = (
        alt.Chart(final)
        .mark_line(point=True)
        .encode(x=alt.X("round:O", title="round (-1 = no round)", axis=alt.Axis(labelAngle=0)),
                y=alt.Y("true success:Q", title="true success at T (%)", scale=alt.Scale(domain=[0, 100])),
                color=alt.Color("series:N", title="dataset · mode"),
                tooltip=["evaluation", "round", "pair", "dataset", "mode", "selector", "N", "chains",
                         alt.Tooltip("true success:Q", format=".1f"),
                         alt.Tooltip("public success:Q", format=".1f"),
                         alt.Tooltip("any-of-chains:Q", format=".1f")])
        .properties(height=280)
    )
    st.altair_chart(chart)
    st.caption("True success at the last turn T (docs/method.md §7): a chain counts when the first pick that "
               "passes the public tests also passes the private tests; averaged over problems × chains (greedy: one "
               "chain; "
               "Best-of-N: N candidates per turn picked by the evaluation's selector). **Pair**: the generator "
               "evaluated and the verifier that ranked its candidates (G1 · RM1: RM1 was trained on rollouts of "
               "G1, as in the paper; G1 · RM0: an experiment that pairs each generator with the previous verifier).")
    pivot = final.pivot_table(index=["round", "pair"], columns="series", values="true success", aggfunc="first")
    st.dataframe(pivot.map(lambda v: "–" if pd.isna(v) else f"{v:.1f}"), key="acc_pivot")

    st.subheader("Accuracy per turn")
    per_turn = long.assign(round=long["round"].fillna(-1).astype(int).astype(str))
    ch = (
        alt.Chart(per_turn)
        .mark_line(point=True)
        .encode(x=alt.X("turn:O", axis=alt.Axis(labelAngle=0)),
                y=alt.Y("true success:Q", title="true success by turn (%)", scale=alt.Scale(domain=[0, 100])),
                color=alt.Color("round:N"),
                tooltip=["evaluation", "turn", alt.Tooltip("true success:Q", format=".1f"),
                         alt.Tooltip("public success:Q", format=".1f"),
                         alt.Tooltip("any-of-chains:Q", format=".1f")])
        .properties(height=180, width=300)
        .facet(facet=alt.Facet("series:N", title=None), columns=2)
    )
    st.altair_chart(ch)
    with st.expander("Per-turn table (true, public and any-of-chains success)"):
        show = long[["evaluation", "round", "dataset", "mode", "turn", "true success", "public success",
                     "any-of-chains", "problems"]].round(1)
        st.dataframe(show, hide_index=True, key="acc_turns")

# -- training trajectories per turn ---------------------------------------------------------------
st.header("Training trajectories per turn")
tt = q("dash_train_turn_success", exp_id)
if not tt:
    st.info("No finished training trajectories yet (the round's `collect` step writes them).")
else:
    frame = df(tt)
    # Fill turns at which no trajectory ended (cumulative values carry forward).
    filled = []
    for _rid, part in frame.groupby("round_id"):
        part = part.set_index("turn")
        last = {"solved_by": 0, "public_by": 0}
        for t in range(1, int(part.index.max()) + 1):
            if t in part.index:
                last = {"solved_by": part.loc[t, "solved_by"], "public_by": part.loc[t, "public_by"]}
            total = part["total"].iloc[0]
            filled.append({"round": str(part["round"].iloc[0]), "turn": t,
                           "solved by turn (%)": 100.0 * last["solved_by"] / total,
                           "public pass by turn (%)": 100.0 * last["public_by"] / total,
                           "trajectories": total})
    tf = pd.DataFrame(filled)
    ch = (alt.Chart(tf).mark_line(point=True)
          .encode(x=alt.X("turn:O", axis=alt.Axis(labelAngle=0)),
                  y=alt.Y("solved by turn (%):Q", scale=alt.Scale(domain=[0, 100])),
                  color="round:N", tooltip=list(tf.columns))
          .properties(height=220))
    st.altair_chart(ch)
    st.dataframe(tf.round(1), hide_index=True, key="train_turns")

# -- public vs private ----------------------------------------------------------------------------
st.header("Public vs private tests")
done_rounds = [r for r in rounds if r["rollouts_done"]]
if not done_rounds:
    st.info("No finished training trajectories yet.")
else:
    g = pd.DataFrame([{
        "round": r["round"], "trajectories": r["rollouts_done"],
        "ended on a public pass (%)": 100.0 * r["rollouts_public"] / r["rollouts_done"],
        "correct (private) (%)": 100.0 * r["rollouts_solved"] / r["rollouts_done"],
        "false public passes": r["rollouts_false_public"],
        "false (% of public passes)": (100.0 * r["rollouts_false_public"] / r["rollouts_public"]
                                       if r["rollouts_public"] else 0.0),
    } for r in done_rounds])
    melted = g.melt(id_vars=["round"], value_vars=["ended on a public pass (%)", "correct (private) (%)"],
                    var_name="trajectories that", value_name="share (%)")
    ch = (alt.Chart(melted).mark_bar()
          .encode(x=alt.X("round:O", axis=alt.Axis(labelAngle=0)), xOffset="trajectories that:N",
                  y="share (%):Q", color="trajectories that:N",
                  tooltip=["round", "trajectories that", alt.Tooltip("share (%):Q", format=".1f")])
          .properties(height=220))
    st.altair_chart(ch)
    st.dataframe(g.round(1), hide_index=True, key="gap")
    st.caption("Training trajectories of every round. A trajectory stops at its first public pass; a *false public "
               "pass* also fails the private tests, so the trajectory ends with a wrong answer. Per-candidate "
               "verdicts by error type are on the Failures page.")
    if evals and acc:
        eg = final[["evaluation", "round", "dataset", "mode", "public success", "true success"]].copy()
        eg["gap (points)"] = eg["public success"] - eg["true success"]
        st.dataframe(eg.round(1), hide_index=True, key="eval_gap")
        st.caption("Evaluations at the last turn: chains whose pick passed the public tests vs chains solved.")

# -- verifier vs oracle -------------------------------------------------------------------------------
st.header("Verifier vs oracle")
agree_source = st.radio("Candidates", ["train", "eval"], horizontal=True, key="agree_source",
                        format_func={"train": "training rollouts", "eval": "evaluation chains (Best-of-N picks)"}.get)
shown_rounds = c.window_rounds(rounds)
agree = c.q_per_round("dash_verifier_agreement", shown_rounds, source=agree_source)
if not agree:
    st.info("No verifier scores on executed candidates yet (the `score` step writes them).")
else:
    ar = pd.DataFrame([{
        "verifier": a["verifier"],
        "on": f"round {a['round']}" if a["round_id"] is not None else f"eval {a['evaluation']}",
        "candidates": a["candidates"], "problems": a["problems"], "mixed problems": a["mixed_problems"],
        "pair accuracy (%)": 100.0 * a["pairs_right"] / a["pairs"] if a["pairs"] else None,
        "disagreement (%)": 100.0 * (1 - a["pairs_right"] / a["pairs"]) if a["pairs"] else None,
        "top-1 miss (%)": 100.0 * a["top1_misses"] / a["solvable"] if a["solvable"] else None,
    } for a in agree])
    st.dataframe(ar.round(1), hide_index=True, key="agreement")
    st.caption("**Disagreement** = share of (correct, incorrect) candidate pairs of the same problem that the "
               "verifier orders the wrong way (1 − within-problem pair accuracy; ties count half). **Top-1 miss** "
               "= among problems with at least one correct candidate, the share where the verifier's "
               "highest-scored candidate is incorrect — the case where Best-of-N and relabeling pick a wrong "
               "answer although a right one was sampled.")

# -- queue and jobs -------------------------------------------------------------------------------
st.header("Queue and jobs")
jobs = q("dash_jobs_summary")
if not jobs:
    st.info("No jobs yet — `mucode round run NAME` queues them; `mucode worker` runs them.")
else:
    jf = df(jobs)
    states = jf.groupby("state")["jobs"].sum().to_dict()
    jc = st.columns(5)
    for col, s_name in zip(jc, ("queued", "running", "done", "failed", "superseded")):
        col.metric(s_name.capitalize(), int(states.get(s_name, 0)))
    show = jf.assign(avg=jf["avg_seconds"].map(c.seconds), max=jf["max_seconds"].map(c.seconds))
    st.dataframe(show[["kind", "queue", "state", "jobs", "max_attempts", "avg", "max", "oldest_queued",
                       "last_finished"]], hide_index=True, key="jobs_summary")
    if states.get("failed"):
        st.subheader("Failed jobs")
        off = c.pager("failed_jobs_page", int(states["failed"]), 10)
        failed = q("dash_jobs", "failed", limit=10, offset=off)
        st.dataframe(df(failed, ["id", "kind", "round_id", "attempts", "worker", "finished_at",
                                                "error"]), hide_index=True, key="failed_jobs")

# -- step timings ---------------------------------------------------------------------------------
st.header("How long each step took")
steps = c.step_rows(rounds)
jt = q("dash_job_step_times", exp_id)
if not steps and not jt:
    st.info("No step records yet (a round records each step's state and timing as it runs).")
if steps:
    sf = pd.DataFrame(steps)
    timed = sf.dropna(subset=["seconds"]).copy()
    if not timed.empty:
        timed["minutes"] = timed["seconds"] / 60.0
        timed["round"] = timed["round"].astype(str)
        ch = (alt.Chart(timed).mark_bar()
              .encode(y=alt.Y("round:N"), x=alt.X("sum(minutes):Q", title="minutes"),
                      color=alt.Color("step:N", sort=alt.SortField("order"), legend=alt.Legend(orient="bottom")),
                      order="order:Q",
                      tooltip=["round", "step", "state", alt.Tooltip("minutes:Q", format=".1f")])
              .properties(height=max(160, 40 * timed["round"].nunique())))
        st.altair_chart(ch)
    sf["took"] = sf["seconds"].map(c.seconds)
    st.dataframe(sf[["round", "step", "state", "took", "started_at", "finished_at", "error"]],
                 hide_index=True, key="steps")
if jt:
    jtf = df(jt)
    jtf["busy"] = jtf["busy_seconds"].map(c.seconds)
    jtf["wall"] = jtf["wall_seconds"].map(c.seconds)
    with st.expander("Per job kind (from the jobs table)"):
        st.dataframe(jtf[["round", "kind", "jobs", "done", "failed", "busy", "wall"]], hide_index=True,
                     key="job_times")

c.footer()
