"""fastconv's raw Numba kernels: pure compute on arrays the ops layer has validated.

Kernels take NCHW-indexed arrays (an NHWC array arrives as a transposed view) unless their name
says ``nhwc``, explicit integer geometry and preallocated outputs; they never validate.
"""
