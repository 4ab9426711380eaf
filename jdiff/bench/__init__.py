"""The ``jdiff bench`` studies: quality against step count on analytic testbeds.

* :mod:`jdiff.bench.steps`: solver error against NFE (``jdiff bench steps``).
* :mod:`jdiff.bench.guidance`: guided sampling on labelled mixtures (``jdiff bench guidance``).
"""

from .steps import (DEFAULT_NFE, DEFAULT_SOLVERS, DEFAULT_TESTBEDS, StepCountConfig, _errors, check_step_counts,
                    load_noise, markdown_table, parse_list, parse_nfe, plot, run_step_counts, sliced_wasserstein,
                    write_outputs)

__all__ = ["DEFAULT_NFE", "DEFAULT_SOLVERS", "DEFAULT_TESTBEDS", "StepCountConfig", "check_step_counts",
           "load_noise", "markdown_table", "parse_list", "parse_nfe", "plot", "run_step_counts",
           "sliced_wasserstein", "write_outputs", "_errors"]
