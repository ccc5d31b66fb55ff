"""Using a trained model: evaluate it on a file, predict glints in images, the classical baseline."""
