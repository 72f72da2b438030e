"""KD Workbench: the Streamlit entry point. It only routes; the pages live in workbench/ui/."""

import streamlit as st

from workbench.ui import compare, dark_knowledge, sweep, train
from workbench.ui.sidebar import sidebar

st.set_page_config(page_title="KD Workbench", page_icon=":material/science:", layout="wide")
st.set_option("client.showErrorDetails", "none")  # also when started without .streamlit/config.toml

pages = [
    st.Page(dark_knowledge.page, title="Dark knowledge", icon=":material/lightbulb:", url_path="dark-knowledge", default=True),
    st.Page(train.page, title="Train", icon=":material/model_training:", url_path="train"),
    st.Page(compare.page, title="Compare", icon=":material/leaderboard:", url_path="compare"),
    st.Page(sweep.page, title="Sweep", icon=":material/grid_on:", url_path="sweep"),
]
page = st.navigation(pages)
sidebar()
try:
    page.run()
except Exception as e:  # the page boundary: one sentence, never a traceback; the other pages still work
    from workbench.jobs import friendly_error

    st.error(f"This page could not be shown: {friendly_error(e)}. The other pages still work; "
             "`kdw runs` lists anything unreadable in the run store.")
