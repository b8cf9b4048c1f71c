"""The page template and JavaScript forward pass of ``pyllm export-html`` (see pyllm/export_html.py)."""
