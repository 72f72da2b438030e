"""The Streamlit app's pages, one module each; every page is a `page()` function that app.py routes to."""
