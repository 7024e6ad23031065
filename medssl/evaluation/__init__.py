"""Evaluation: detection maps on the case's own grid, the PI-CAI protocol, CV reports, BraTS region metrics.

Numbers must be comparable with published PI-CAI results, so lesion extraction goes through
``report_guided_annotation`` and scoring through ``picai_eval``; this package only wires them to
our grids, files and reports.
"""

import contextlib
import io

# Both packages print a citation banner on import; keep stdout for results (``medssl check --json``).
# Please cite them (see README): their authors ask for it in that banner.
with contextlib.redirect_stdout(io.StringIO()):
    import picai_eval  # noqa: F401
    import report_guided_annotation  # noqa: F401
