"""jdiff: diffusion models as pure JAX functions.

Quick start::

    import jax, jdiff
    schedule = jdiff.schedules.vp_discrete()
    testbed = jdiff.testbeds.get_testbed("mix2d")
    model_fn = testbed.model_fn(schedule)                 # exact eps-prediction
    grid = jdiff.grids.make_grid(schedule, "logsnr", 10)  # 10 steps ending at t = 0
    x_T = jax.random.normal(jax.random.key(0), (512, 2))
    x_0 = jdiff.sample(model_fn, schedule, jdiff.solvers.get_solver("heun"), grid, x_T)
"""

from . import (data, grids, hooks, losses, network, prediction, prng, schedules, solvers, statics, testbeds,
               thresholding, training)
from .reference import reference_solve
from .sampling import SampleState, init_noise, make_denoise, nfe, sample

__version__ = "0.1.0"

__all__ = ["data", "hooks", "statics", "SampleState", "losses", "network", "training", "grids", "prediction", "prng", "schedules", "solvers", "testbeds", "thresholding", "sample", "nfe", "init_noise",
           "make_denoise", "reference_solve", "__version__"]
