"""KD Workbench's Streamlit entry: it only routes; the pages live beside it in workbench/app/.

`kdw app` runs this file with Streamlit (so does the repository's app.py, for `streamlit run app.py`). Every page
has its own address (/dark-knowledge, /train, /compare, /sweep, /compress); the root address opens Dark knowledge, keeping any
query string (?T=4&image=17&dataset=fashion-mnist).
"""

import streamlit as st

from workbench.app import common, compare, compress, dark_knowledge, sweep, train
from workbench.app.sidebar import sidebar


def main() -> None:
    st.set_page_config(page_title="KD Workbench", page_icon="🧪", layout="wide",
                       initial_sidebar_state="auto")
    st.set_option("client.showErrorDetails", "none")  # also when started without .streamlit/config.toml
    dark = st.Page(dark_knowledge.page, title="Dark knowledge", icon=":material/lightbulb:",
                   url_path="dark-knowledge")

    def home() -> None:
        st.switch_page(dark, query_params=st.query_params.to_dict())

    pages = [
        st.Page(home, title="KD Workbench", url_path="home", default=True, visibility="hidden"),
        dark,
        st.Page(train.page, title="Train", icon=":material/model_training:", url_path="train"),
        st.Page(compare.page, title="Compare", icon=":material/leaderboard:", url_path="compare"),
        st.Page(sweep.page, title="Sweep", icon=":material/grid_on:", url_path="sweep"),
        st.Page(compress.page, title="Compress", icon=":material/compress:", url_path="compress"),
    ]
    page = st.navigation(pages, position="top")
    ss = st.session_state  # which page this run shows, and whether it was another one before (common.remember_form)
    ss[common.ENTERED], ss["_page"] = ss.get("_page") != page.url_path, page.url_path
    common.page_chrome()
    sidebar()
    common.guarded(page.run)


if __name__ == "__main__":  # Streamlit runs this file as __main__ on every rerun
    main()
