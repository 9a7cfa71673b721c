"""Stage 6, report: what users look at after a run, built only from the files in results/.

Owns the table rows, the plots, summary.csv and the HTML/Markdown report, the comparison of
backends within a phase (`backends`), the comparison of two phases (`phases`) and MLflow
tracking. It may import any earlier stage; nothing imports it except `cli`.
"""
