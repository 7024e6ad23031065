"""Evaluation: detection maps on the case's own grid, the PI-CAI protocol, CV reports, BraTS region metrics.

Numbers must be comparable with published PI-CAI results, so lesion extraction goes through
``report_guided_annotation`` and scoring through ``picai_eval``; this package only wires them to
our grids, files and reports.
"""
