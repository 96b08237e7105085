"""ft-train-mlx: ft's MLX training backend."""
