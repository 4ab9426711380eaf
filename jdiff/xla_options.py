"""Backend-specific XLA compiler options: workarounds kept out of the library's core.

Each entry states what it works around and what it measured; re-check on jaxlib upgrades.

* :data:`CPU_CONV_EIGEN` (training on CPU; ``RunConfig.cpu_conv_eigen``, applied by
  :func:`jdiff.run.train_run` only when the backend is CPU): XLA:CPU (jaxlib 0.10) hands
  convolutions to YNNPACK, which runs kernel-gradient convolutions (a window as large as the
  feature map) about 4.6x slower per FLOP than forward ones. Keeping YNNPACK for dots and
  reductions but convolutions on Eigen made the CIFAR-10 UNet training step 1.7x faster on one
  core (within 1.3x of PyTorch) and the digits UNet step 0.144 s -> 0.118 s on two
  (``benchmarks/results/train_speed_1core.md``, ``train_speed_digits.md``). Experimental option.

The sampler's PRNG workaround lives in :mod:`jdiff.prng` with its own measurements.
"""

CPU_CONV_EIGEN = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}

__all__ = ["CPU_CONV_EIGEN"]
