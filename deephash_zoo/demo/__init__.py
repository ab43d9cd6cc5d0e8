"""The search demo page: a Gradio app over a hash index (``deephash-demo``), and the checks around it.

``app`` builds the page from a loaded index, ``uploads`` vets what a visitor uploads, ``browser`` drives
headless Chromium for screenshots. Gradio is optional (extra ``demo``) and imported by ``app`` only.
"""
