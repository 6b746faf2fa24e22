"""The study report: compute a :class:`ReportData`, then draw it as one HTML file.

Compute first, render second: :func:`trials_frame` and :func:`report_data` return
plain pandas/python objects that tests check directly; :func:`write_report` draws
them with plotly (imported only there) into a self-contained ``report.html``
next to ``trials.csv`` and ``pareto.csv``.

Example:
    >>> import optuna  # doctest: +SKIP
    >>> study = optuna.load_study(study_name="mnist", storage="sqlite:///runs/mnist/study.db")  # doctest: +SKIP
    >>> write_report(study, "runs/mnist")  # doctest: +SKIP
    PosixPath('runs/mnist/report.html')
"""


from compresstune.search.report._data import KNOBS, ReportData, report_data, trials_frame
from compresstune.search.report._html import render_html, write_report

__all__ = ["KNOBS", "ReportData", "render_html", "report_data", "trials_frame", "write_report"]
