"""The mucode dashboard: ``mucode dashboard`` (or ``streamlit run dashboard/home.py``).

Pages: Overview (rounds, accuracy, gaps, queue, timings), Trajectories (a problem's rollouts turn by turn),
Failures (error types, limits, never-solved problems), Rankings (verifier rankings, verifier metrics, calibration
and ROC, relabeled targets) and Compare (experiments side by side with intervals, Best-of-n scaling). The
database is ``MUCODE_DATABASE_URL``; every read goes through ``app.store.Store``.

``streamlit run`` puts this file's folder first on ``sys.path``: no module here may be named like a package
the dashboard imports (``app``, ``dashboard``), and the dashboard's own modules are imported as
``dashboard.*``, from the installed package (or the repository root on ``PYTHONPATH``, as ``mucode dashboard``
sets it).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import common

_HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="mucode dashboard", page_icon=":material/science:", layout="wide")

# The page scripts live in views/, not pages/: a pages/ folder beside the entrypoint switches Streamlit into
# its legacy (v1) multipage mode, which wraps this script and can rerun a page without it (no sidebar).
common.PAGES.update(
    overview=st.Page(_HERE / "views" / "overview.py", title="Overview", icon=":material/monitoring:",
                     url_path="overview", default=True),
    trajectories=st.Page(_HERE / "views" / "trajectories.py", title="Trajectories", icon=":material/timeline:",
                         url_path="trajectories"),
    failures=st.Page(_HERE / "views" / "failures.py", title="Failures", icon=":material/bug_report:",
                     url_path="failures"),
    rankings=st.Page(_HERE / "views" / "rankings.py", title="Rankings", icon=":material/leaderboard:",
                     url_path="rankings"),
    compare=st.Page(_HERE / "views" / "compare.py", title="Compare", icon=":material/compare_arrows:",
                    url_path="compare"),
)
nav = st.navigation(list(common.PAGES.values()))

with st.sidebar:
    st.markdown("### µCode runs")
problem = common.check_store()
if problem is not None:
    st.title(nav.title)
    st.error(problem)
    common.footer()
    st.stop()
common.experiment_picker()
common.rounds_window_picker()
common.sidebar()
nav.run()
