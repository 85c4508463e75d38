"""Evaluation metrics with a direction, and Delta-m% against single-task baselines."""

from mtl_jax._src.metrics import (BINARY_ACCURACY, BINARY_CROSS_ENTROPY, CROSS_ENTROPY, MAE, MSE,
                                  MULTICLASS_ACCURACY, RMSE, Metric, delta_m)

__all__ = ['BINARY_ACCURACY', 'BINARY_CROSS_ENTROPY', 'CROSS_ENTROPY', 'MAE', 'MSE',
           'MULTICLASS_ACCURACY', 'Metric', 'RMSE', 'delta_m']
