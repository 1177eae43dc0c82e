"""The dashboard's page scripts (run by Streamlit through st.navigation in dashboard/home.py, not
imported)."""
